"""Protocols: grid choice on validation only; the test split is opened once, after every choice."""

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pvera_bench import adapters
from pvera_bench.backbones import Classifier
from pvera_bench.data import Split
from pvera_bench.protocols import ProtocolError, grid_points, run_protocol
from pvera_bench.train import DivergedError, Trainer

from conftest import tiny_vit

SETTINGS = dict(epochs=2, batch_size=16, lr_head=1e-2, lr_adapter=1e-2, wd_head=0.0, wd_adapter=0.0,
                warmup_epochs=0, schedule="cosine", shuffle=True, precision="fp32", eval_batch_size=64,
                progress=False)


def make_split(n, seed):
    g = np.random.default_rng(seed)
    labels = g.integers(0, 3, n)
    images = np.zeros((n, 32, 32, 3), np.uint8) + (labels * 80)[:, None, None, None].astype(np.uint8)
    return Split(images, labels.astype(np.int64))


class Spy:
    """Records every event in order: split loads and fits."""

    def __init__(self, checkpoint_dir=None):
        self.checkpoint_dir = checkpoint_dir
        self.events = []
        self.splits = {"train800": make_split(48, 0), "val200": make_split(24, 1),
                       "train800val200": make_split(72, 2), "test": make_split(30, 3)}

    def load(self, name):
        self.events.append(("load", name))
        return self.splits[name]

    def build(self, point, index=0):
        torch.manual_seed(0)
        bb = tiny_vit()
        adapters.apply(bb, "lora", r=2, alpha=2)
        settings = dict(SETTINGS, **{k.split(".", 1)[1]: v for k, v in point.items()})
        trainer = Trainer(Classifier(bb, 3), settings, torch.device("cpu"), checkpoint_dir=self.checkpoint_dir,
                          checkpoint_every=1 if self.checkpoint_dir else 0)
        spy = self
        fit = trainer.fit

        def recorded_fit(train, val=None, **kw):
            assert train is not spy.splits["test"] and val is not spy.splits["test"]
            spy.events.append(("fit", dict(point)))
            return fit(train, val, **kw)

        trainer.fit = recorded_fit
        return trainer


def test_grid_points():
    assert grid_points({}) == [{}]
    assert grid_points({"a.x": [1, 2], "b": {"y": [3]}}) == [{"a.x": 1, "b.y": 3}, {"a.x": 2, "b.y": 3}]
    assert grid_points({"a": 5}) == [{"a": 5}]


@pytest.mark.parametrize("final_on,test_every", [("train800val200", 0), (None, 0), ("train800val200", 1)])
def test_test_split_is_opened_last_and_once(final_on, test_every):
    spy = Spy()
    p = dict(select_on="train800", val_split="val200", final_on=final_on, test_split="test", metric="loss",
             checkpoint="best" if final_on is None else "last", test_eval_every=test_every,
             grid={"trainer.lr_adapter": [1e-2, 1e-4], "trainer.lr_head": [1e-2]})
    out = run_protocol(p, spy.build, spy.load)
    loads = [e for e in spy.events if e[0] == "load"]
    if test_every:  # scored along the final fit: opened after every choice, and only the final fit follows
        assert spy.events[spy.events.index(("load", "test")) + 1:] == [("fit", out.chosen)]
        assert [e["epoch"] for e in out.fit.history if "test_acc" in e] == [1, 2]
        assert out.record()["test_acc_max"] == max(e["test_acc"] for e in out.fit.history)
    else:
        assert spy.events[-1] == ("load", "test")  # nothing happens after the test split is opened...
        assert np.isnan(out.record()["test_acc_max"])
    assert loads.count(("load", "test")) == 1  # ...and it is opened once
    fits = [e for e in spy.events if e[0] == "fit"]
    assert len(fits) == (3 if final_on else 2)
    # the choice is the candidate with the best validation score
    best = min(out.grid_scores, key=lambda s: s["val_loss"])
    assert out.chosen == best["point"] and out.val_loss == best["val_loss"]
    if final_on:
        assert fits[-1] == ("fit", out.chosen) and ("load", "train800val200") in loads
    assert len(out.test.probs) == 30 and out.test.labels.tolist() == spy.splits["test"].labels.tolist()


def test_single_point_vtab_trains_final_model_directly():
    spy = Spy()
    p = dict(select_on="train800", val_split="val200", final_on="train800val200", test_split="test",
             metric="acc", checkpoint="last", grid={})
    out = run_protocol(p, spy.build, spy.load)
    assert [e for e in spy.events if e[0] == "load"] == [("load", "train800val200"), ("load", "test")]
    assert np.isnan(out.val_acc)


@pytest.mark.parametrize("bad", [dict(metric="accuracy"), dict(checkpoint="bets")])
def test_a_misspelt_selection_rule_is_an_error_before_any_training(bad):
    def never(*args):
        raise AssertionError("nothing may be built or loaded")

    p = {**dict(name="x", select_on="train800", val_split="val200", final_on=None, test_split="test",
                metric="acc", checkpoint="best"), **bad}
    with pytest.raises(ProtocolError, match="metric must be acc or loss"):
        run_protocol(p, never, never)


HOLDOUT = dict(name="holdout", select_on="train800", val_split="val200", final_on=None, test_split="test",
               metric="acc", checkpoint="best")


def test_a_test_curve_needs_a_final_fit():
    with pytest.raises(ProtocolError, match=r"test_eval_every=5 .* \(final_on is null\)"):
        run_protocol(dict(HOLDOUT, test_eval_every=5), None, None)


def both_lrs(spy):
    """``build`` for a grid over ``lr``: the head's and the adapter's learning rate together."""
    return lambda point, index=0: spy.build({"trainer.lr_head": point["lr"], "trainer.lr_adapter": point["lr"]})


def test_a_diverging_candidate_is_recorded_and_scored_worst():
    spy = Spy()
    out = run_protocol(dict(HOLDOUT, grid={"lr": [1e30, 1e-2]}), both_lrs(spy), spy.load)
    assert out.chosen == {"lr": 1e-2}
    assert out.grid_scores[0] == {"point": {"lr": 1e30}, "status": "diverged", "epoch": 1}
    assert out.grid_scores[1]["status"] == "ok" and out.val_acc == out.grid_scores[1]["val_acc"]


def test_the_run_fails_only_when_every_candidate_diverges():
    spy = Spy()
    with pytest.raises(DivergedError, match=r"every candidate diverged \(2 of 2\).*Lower the learning rate"):
        run_protocol(dict(HOLDOUT, grid={"lr": [1e30, 1e31]}), both_lrs(spy), spy.load)


def die_on(name):
    """``Trainer._save_checkpoint`` that saves, then kills the job when it saved ``name``."""
    real = Trainer._save_checkpoint

    def save(self, path, *a):
        real(self, path, *a)
        if path.name == name:
            raise KeyboardInterrupt
    return save


def test_a_grid_killed_in_its_final_fit_resumes_without_training_a_candidate_again(tmp_path, monkeypatch):
    p = dict(HOLDOUT, name="vtab", final_on="train800val200", checkpoint="last",
             grid={"trainer.lr_adapter": [1e-2, 1e-4]})
    ref = run_protocol(p, Spy().build, Spy().load)
    with monkeypatch.context() as m:
        m.setattr(Trainer, "_save_checkpoint", die_on("final.safetensors"))
        with pytest.raises(KeyboardInterrupt):
            run_protocol(p, Spy(tmp_path).build, Spy().load, state_dir=tmp_path)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["final.safetensors", "select-0.json", "select-1.json"]
    spy = Spy(tmp_path)
    out = run_protocol(p, spy.build, spy.load, state_dir=tmp_path)
    assert [e for e in spy.events if e[0] == "fit"] == [("fit", ref.chosen)]  # the final fit, resumed
    assert [e for e in spy.events if e[0] == "load"] == [("load", "train800val200"), ("load", "test")]
    assert out.chosen == ref.chosen and out.grid_scores == ref.grid_scores
    assert torch.equal(out.test.probs, ref.test.probs)
    assert list(tmp_path.iterdir()) == []  # nothing left once the run is done


def killed_at_test(spy):
    """``load`` that opens every split but the test split, where the job is killed."""
    def load(name):
        if name == "test":
            raise KeyboardInterrupt
        return spy.load(name)
    return load


def test_a_holdout_grid_resumed_after_its_candidates_keeps_the_chosen_weights(tmp_path):
    p = dict(HOLDOUT, grid={"trainer.lr_adapter": [1e-4, 1e-2]})
    ref = run_protocol(p, Spy().build, Spy().load)
    spy = Spy(tmp_path)

    with pytest.raises(KeyboardInterrupt):
        run_protocol(p, spy.build, killed_at_test(spy), state_dir=tmp_path)
    kept = sorted(f.name for f in tmp_path.iterdir())
    i = [s["point"] for s in ref.grid_scores].index(ref.chosen)
    assert kept == sorted(["select-0.json", "select-1.json", f"select-{i}.best.safetensors"])
    again = Spy(tmp_path)
    out = run_protocol(p, again.build, again.load, state_dir=tmp_path)
    assert again.events == [("load", "test")]  # no split but the test split, no fit
    assert out.chosen == ref.chosen and out.fit.best_epoch == ref.fit.best_epoch
    assert torch.equal(out.test.probs, ref.test.probs)


# -- end to end: a real process, killed (SIGKILL) during its final fit ----------------------------
def pvera_bench_cmd(*args):
    import sys

    return [sys.executable, "-m", "pvera_bench.cli", *args]


@pytest.mark.slow
def test_cli_grid_killed_during_the_final_fit_resumes_without_training_a_candidate_again(tmp_path, cache_dir):
    import os
    import signal
    import subprocess

    from pvera_bench import results

    env = dict(os.environ, HF_HUB_OFFLINE="1", PVERA_BENCH_CACHE=str(cache_dir), OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    base = ["adapter=lora", "task=demo", "backbone=vit_tiny_random", "protocol=vtab", "trainer.epochs=3",
            "trainer.batch_size=32", "trainer.warmup_epochs=1", "runtime.progress=false", "runtime.threads=1",
            "++protocol.grid={trainer.lr_adapter:[3e-3,1e-2]}", "runtime.checkpoint_every=1"]
    ck = tmp_path / "ck"
    args = base + [f"runtime.checkpoint_dir={ck}", f"results_csv={tmp_path / 'killed.csv'}"]
    proc = subprocess.Popen(pvera_bench_cmd(*args), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not list(ck.glob("*/final.safetensors")):
        assert proc.poll() is None and time.monotonic() < deadline, "the final fit's checkpoint never appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (state,) = ck.iterdir()
    assert {f.name for f in state.iterdir()} >= {"select-0.json", "select-1.json", "final.safetensors"}
    again = subprocess.run(pvera_bench_cmd(*args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    out = again.stdout + again.stderr
    assert out.count("finished in an earlier run") == 2 and "resuming final from its checkpoint" in out
    assert "select-0 from its checkpoint" not in out and "select-1 from its checkpoint" not in out
    ref = subprocess.run(pvera_bench_cmd(*base, f"runtime.checkpoint_dir={tmp_path / 'ck-ref'}",
                                         f"results_csv={tmp_path / 'ref.csv'}"),
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    (a,), (b,) = results.read(tmp_path / "killed.csv"), results.read(tmp_path / "ref.csv")
    assert a["status"] == b["status"] == "ok"
    for col in ("test_acc", "test_nll", "chosen", "grid_scores", "epochs"):
        assert a[col] == b[col], col
    # the history of the resumed run holds every epoch of every fit once
    import csv

    hist = list(csv.DictReader(open(Path(a["run_dir"]) / "history.csv")))
    assert [(r["fit"], int(r["epoch"])) for r in hist] == [(f, e) for f in ("select-0", "select-1", "final")
                                                          for e in range(1, 4)]
    assert float(a["train_seconds"]) > 0.5 * float(b["train_seconds"])


# -- joint grids: the PVeRA code's lockstep rule -------------------------------------------------
from pvera_bench import checkpoint  # noqa: E402
from pvera_bench.protocols import GridSelection  # noqa: E402
from pvera_bench.train import Selection  # noqa: E402


def drive_grid(grid, losses, start=1):
    """Feed per-candidate ``losses`` (lists of equal length, epochs 1, 2, ...) until the grid stops;
    returns (stop epoch or None, [(epoch, chosen) at every move of the grid's best])."""
    moves = []
    for epoch, row in enumerate(zip(*losses), start=start):
        if grid.update(epoch, {i: (0.0, loss) for i, loss in enumerate(row) if i in grid.live}):
            moves.append((epoch, grid.chosen))
        if grid.should_stop:
            return epoch, moves
    return None, moves


def test_a_joint_grid_stops_only_when_every_candidate_has_stalled():
    # Patience 3. Alone, A (best at epoch 2) would stop at epoch 5. Jointly it trains on while B
    # still improves (to epoch 7), improves again at epoch 6, and the grid stops at the first epoch
    # both are 3 or more past their best: 10 (10 - 7 = 3, 10 - 6 = 4).
    a = [1.0, 0.9, 0.95, 0.95, 0.95, 0.85] + [0.95] * 14
    b = [2.0, 1.9, 1.8, 1.7, 1.6, 1.5, 1.4] + [1.5] * 13
    alone = Selection("loss", patience=3, min_rel_delta=0.0)
    stop_alone = next(e for e, loss in enumerate(a, start=1) if (alone.update(e, 0.0, loss), alone.should_stop)[1])
    assert stop_alone == 5
    grid = GridSelection(2, "loss", patience=3, min_rel_delta=0.0)
    stop, moves = drive_grid(grid, [a, b])
    assert stop == 10 and [c.best_epoch for c in grid.candidates] == [6, 7]
    assert moves == [(1, 0), (2, 0), (6, 0)] and (grid.chosen, grid.epoch) == (0, 6)


def test_the_grid_best_moves_only_on_a_relative_gain_above_the_threshold():
    # min_rel_delta 1%. A is flat at 1.0. B's best reaches 0.995 at epoch 2: B is now lower, but
    # only 0.5% below the grid's best (1.0), so A stays chosen; 0.99 at epoch 3 is not even B's own
    # best (0.5% below 0.995); 0.985 at epoch 4 is (1.005% below 0.995), and 1.5% below the grid's
    # best: B is chosen, with its weights of epoch 4.
    grid = GridSelection(2, "loss", patience=50, min_rel_delta=0.01)
    _, moves = drive_grid(grid, [[1.0] * 5, [1.2, 0.995, 0.99, 0.985, 0.99]])
    assert moves == [(1, 0), (4, 1)] and grid.candidates[1].best_epoch == 4
    grid = GridSelection(2, "loss", patience=50, min_rel_delta=0.01)
    _, moves = drive_grid(grid, [[1.0] * 3, [1.2, 0.995, 0.99]])
    assert moves == [(1, 0)] and grid.chosen == 0 and grid.candidates[1].val_loss < grid.candidates[0].val_loss


def test_a_diverged_candidate_leaves_the_grid_and_the_choice():
    grid = GridSelection(3, "loss", patience=2, min_rel_delta=0.0)
    drive_grid(grid, [[1.0, 0.5], [0.9, 0.8], [0.95, 0.7]])
    assert grid.chosen == 0
    grid.drop(0)  # candidate 0 diverges in epoch 3: the best live one at its own best epoch
    assert (grid.chosen, grid.epoch, grid.live) == (2, 2, [1, 2])
    stop, _ = drive_grid(grid, [[None] * 2, [0.85, 0.85], [0.8, 0.8]], start=3)
    assert stop == 4 and grid.chosen == 2 and [c.best_epoch for c in grid.candidates[1:]] == [2, 2]


def pvera_build(spy, **settings):
    """``build`` with PVeRA, whose training samples noise: a candidate stepped in lockstep with
    others must draw exactly the noise it draws alone."""
    def build(point, index=0):
        torch.manual_seed(0)
        bb = tiny_vit()
        adapters.apply(bb, "pvera", r=4, projection_seed=0)
        cfg = dict(SETTINGS, **settings, **{k.split(".", 1)[1]: v for k, v in point.items()})
        return Trainer(Classifier(bb, 3), cfg, torch.device("cpu"), checkpoint_dir=spy.checkpoint_dir,
                       checkpoint_every=1 if spy.checkpoint_dir else 0, on_epoch=spy.epoch)
    return build


class EpochSpy(Spy):
    def __init__(self, checkpoint_dir=None):
        super().__init__(checkpoint_dir)
        self.epochs = []

    def epoch(self, tag, entry):
        self.epochs.append((tag, entry["epoch"], entry["train_loss"], entry.get("val_loss")))


JOINT = dict(HOLDOUT, metric="loss", grid_mode="joint", patience=None, grid={"trainer.lr_adapter": [1e-2, 1e-3]})


def test_candidates_in_lockstep_train_exactly_as_alone():
    alone, joint = EpochSpy(), EpochSpy()
    ref = run_protocol(dict(JOINT, grid_mode="separate"), pvera_build(alone, epochs=3), alone.load)
    out = run_protocol(JOINT, pvera_build(joint, epochs=3), joint.load)
    assert sorted(joint.epochs) == sorted(alone.epochs) and len(joint.epochs) == 6
    assert [e[:2] for e in joint.epochs] == [("select-0", 1), ("select-1", 1), ("select-0", 2), ("select-1", 2),
                                             ("select-0", 3), ("select-1", 3)]
    # min_rel_delta 0: the grid keeps the candidate with the lowest loss, at its best epoch
    assert out.chosen == ref.chosen and out.val_loss == ref.val_loss and out.fit.best_epoch == ref.fit.best_epoch
    assert torch.equal(out.test.probs, ref.test.probs)
    kept = [s for s in out.grid_scores if "kept_epoch" in s]
    assert len(kept) == 1 and kept[0]["point"] == out.chosen and kept[0]["kept_epoch"] == out.fit.best_epoch


def test_a_joint_grid_trains_every_candidate_to_the_common_stop():
    def grid(mode, lrs):
        spy = EpochSpy()
        p = dict(JOINT, grid_mode=mode, patience=1, grid={"trainer.lr_adapter": lrs})
        return run_protocol(p, pvera_build(spy, epochs=8, lr_head=1e-1), spy.load).grid_scores

    # lr 0.1 overshoots: alone its loss rises in epoch 2 and patience 1 stops it there. In lockstep
    # with lr 0.01, still improving, it trains on, and its best moves past the epoch it stopped at.
    alone, joint = grid("separate", [1e-1, 1e-2]), grid("joint", [1e-1, 1e-2])
    assert alone[0]["epochs"] < alone[1]["epochs"] and alone[0]["epochs"] - alone[0]["best_epoch"] == 1
    assert joint[0]["epochs"] == joint[1]["epochs"] == alone[1]["epochs"]
    assert joint[0]["best_epoch"] > alone[0]["epochs"] and joint[1] == alone[1]
    # two candidates that stall together stop together, where each stops alone
    alone, joint = grid("separate", [1e-1, 1e-1]), grid("joint", [1e-1, 1e-1])
    assert [s["epochs"] for s in joint] == [s["epochs"] for s in alone] == [alone[0]["epochs"]] * 2
    assert alone[0]["epochs"] < 8


def test_a_joint_grid_killed_mid_training_resumes_from_its_round(tmp_path, monkeypatch):
    p = dict(JOINT, patience=3)
    ref = run_protocol(p, pvera_build(EpochSpy(), epochs=4), Spy().load)
    real = checkpoint.save_joint

    def save_then_die(path, parts, extra, info):
        real(path, parts, extra, info)
        if info["grid"]["candidates"][0]["epoch"] == 2:
            raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "save_joint", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            run_protocol(p, pvera_build(EpochSpy(tmp_path), epochs=4), Spy().load, state_dir=tmp_path)
    assert [f.name for f in tmp_path.iterdir()] == ["select-joint.safetensors"]
    spy = EpochSpy(tmp_path)
    out = run_protocol(p, pvera_build(spy, epochs=4), spy.load, state_dir=tmp_path)
    trained = [e[:2] for e in spy.epochs]
    assert trained[:4] == [("select-0", 1), ("select-0", 2), ("select-1", 1), ("select-1", 2)]  # replayed
    assert trained[4:] == [("select-0", 3), ("select-1", 3), ("select-0", 4), ("select-1", 4)]  # trained
    assert out.chosen == ref.chosen and out.grid_scores == ref.grid_scores
    assert torch.equal(out.test.probs, ref.test.probs)
    assert list(tmp_path.iterdir()) == []


def test_a_joint_grid_resumed_after_it_finished_trains_nothing(tmp_path):
    ref = run_protocol(JOINT, pvera_build(EpochSpy(), epochs=2), Spy().load)
    spy = EpochSpy(tmp_path)

    with pytest.raises(KeyboardInterrupt):
        run_protocol(JOINT, pvera_build(spy, epochs=2), killed_at_test(spy), state_dir=tmp_path)
    again = EpochSpy(tmp_path)
    out = run_protocol(JOINT, pvera_build(again, epochs=2), again.load, state_dir=tmp_path)
    assert again.events == [("load", "test")]
    assert out.chosen == ref.chosen and torch.equal(out.test.probs, ref.test.probs)


def test_a_diverging_candidate_leaves_a_joint_grid():
    spy = EpochSpy()
    out = run_protocol(dict(JOINT, grid={"lr": [1e30, 1e-2]}), lambda pt, index=0: pvera_build(spy, epochs=2)(
        {"trainer.lr_head": pt["lr"], "trainer.lr_adapter": pt["lr"]}), spy.load)
    assert out.chosen == {"lr": 1e-2} and out.grid_scores[0] == {"point": {"lr": 1e30}, "status": "diverged", "epoch": 1}
    assert out.grid_scores[1]["epochs"] == 2
    with pytest.raises(DivergedError, match=r"every candidate diverged \(2 of 2\)"):
        run_protocol(dict(JOINT, grid={"lr": [1e30, 1e31]}), lambda pt, index=0: pvera_build(spy, epochs=2)(
            {"trainer.lr_head": pt["lr"], "trainer.lr_adapter": pt["lr"]}), spy.load)


def test_a_joint_grid_needs_the_best_checkpoint():
    with pytest.raises(ProtocolError, match="grid_mode=joint .* needs checkpoint: best"):
        run_protocol(dict(JOINT, checkpoint="last"), None, None)
