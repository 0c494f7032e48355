"""Protocols: grid choice on validation only; the test split is opened once, after every choice."""

from pathlib import Path

import numpy as np
import pytest
import torch

from pvera_bench import adapters, checkpoint
from pvera_bench.backbones import Classifier
from pvera_bench.checkpoint import RunState
from pvera_bench.data import Split
from pvera_bench.plan import grid_points
from pvera_bench.protocols import Candidate, GridSelection, ProtocolError, run_protocol
from pvera_bench.train import DivergedError, Selection, Trainer

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

    @property
    def state(self):
        return RunState(self.checkpoint_dir, every=1)

    def build(self, cand):
        torch.manual_seed(0)
        bb = tiny_vit()
        adapters.apply(bb, "lora", r=2, alpha=2)
        point = cand.point
        settings = dict(SETTINGS, **{k.split(".", 1)[1]: v for k, v in point.items()})
        trainer = Trainer(Classifier(bb, 3), settings, torch.device("cpu"))
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
    return lambda c: spy.build(Candidate(c.index, {"trainer.lr_head": c.point["lr"], "trainer.lr_adapter": c.point["lr"]}))


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
    """``checkpoint.save`` that saves, then kills the job when it saved ``name``."""
    real = checkpoint.save

    def save(path, *a):
        real(path, *a)
        if path.name == name:
            raise KeyboardInterrupt
    return save


def test_a_grid_killed_in_its_final_fit_resumes_without_training_a_candidate_again(tmp_path, monkeypatch):
    p = dict(HOLDOUT, name="vtab", final_on="train800val200", checkpoint="last",
             grid={"trainer.lr_adapter": [1e-2, 1e-4]})
    ref = run_protocol(p, Spy().build, Spy().load)
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "save", die_on("final.safetensors"))
        with pytest.raises(KeyboardInterrupt):
            run_protocol(p, Spy(tmp_path).build, Spy().load, state=Spy(tmp_path).state)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["candidate-0.json", "candidate-1.json", "final.safetensors"]
    spy = Spy(tmp_path)
    out = run_protocol(p, spy.build, spy.load, state=spy.state)
    assert [e for e in spy.events if e[0] == "fit"] == [("fit", ref.chosen)]  # the final fit, resumed
    assert [e for e in spy.events if e[0] == "load"] == [("load", "train800val200"), ("load", "test")]
    assert out.chosen == ref.chosen and out.grid_scores == ref.grid_scores
    assert torch.equal(out.test.probs, ref.test.probs)
    # the final model is committed; its fit's checkpoint is gone. The run clears the rest after its row.
    assert sorted(f.name for f in tmp_path.iterdir()) == ["candidate-0.json", "candidate-1.json", "model.json",
                                                         "model.safetensors"]


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
        run_protocol(p, spy.build, killed_at_test(spy), state=spy.state)
    kept = sorted(f.name for f in tmp_path.iterdir())
    i = [s["point"] for s in ref.grid_scores].index(ref.chosen)
    assert kept == sorted(["candidate-0.json", "candidate-1.json", f"candidate-{i}.safetensors", "model.json",
                           "model.safetensors"])
    again = Spy(tmp_path)
    out = run_protocol(p, again.build, again.load, state=again.state)
    assert again.events == [("load", "test")]  # no split but the test split, no fit
    assert out.chosen == ref.chosen and out.fit.best_epoch == ref.fit.best_epoch
    assert torch.equal(out.test.probs, ref.test.probs)


# -- joint grids: the PVeRA code's lockstep rule -------------------------------------------------


def new_grid(n, metric, patience, min_rel_delta):
    return GridSelection([Selection(metric, patience, min_rel_delta) for _ in range(n)], min_rel_delta)


def drive_grid(grid, losses, start=1):
    """Feed per-candidate ``losses`` (lists of equal length, epochs 1, 2, ...) to the candidates'
    selections until the grid stops; returns (stop epoch or None, [(epoch, chosen) at every move
    of the grid's best])."""
    moves = []
    for epoch, row in enumerate(zip(*losses), start=start):
        for i, loss in enumerate(row):
            if i in grid.live:
                grid.candidates[i].update(epoch, 0.0, loss)
        if grid.update(epoch):
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
    grid = new_grid(2, "loss", patience=3, min_rel_delta=0.0)
    stop, moves = drive_grid(grid, [a, b])
    assert stop == 10 and [c.best_epoch for c in grid.candidates] == [6, 7]
    assert moves == [(1, 0), (2, 0), (6, 0)] and (grid.chosen, grid.epoch) == (0, 6)


def test_the_grid_best_moves_only_on_a_relative_gain_above_the_threshold():
    # min_rel_delta 1%. A is flat at 1.0. B's best reaches 0.995 at epoch 2: B is now lower, but
    # only 0.5% below the grid's best (1.0), so A stays chosen; 0.99 at epoch 3 is not even B's own
    # best (0.5% below 0.995); 0.985 at epoch 4 is (1.005% below 0.995), and 1.5% below the grid's
    # best: B is chosen, with its weights of epoch 4.
    grid = new_grid(2, "loss", patience=50, min_rel_delta=0.01)
    _, moves = drive_grid(grid, [[1.0] * 5, [1.2, 0.995, 0.99, 0.985, 0.99]])
    assert moves == [(1, 0), (4, 1)] and grid.candidates[1].best_epoch == 4
    grid = new_grid(2, "loss", patience=50, min_rel_delta=0.01)
    _, moves = drive_grid(grid, [[1.0] * 3, [1.2, 0.995, 0.99]])
    assert moves == [(1, 0)] and grid.chosen == 0 and grid.candidates[1].val_loss < grid.candidates[0].val_loss


def test_a_diverged_candidate_leaves_the_grid_and_the_choice():
    grid = new_grid(3, "loss", patience=2, min_rel_delta=0.0)
    drive_grid(grid, [[1.0, 0.5], [0.9, 0.8], [0.95, 0.7]])
    assert grid.chosen == 0
    grid.drop(0)  # candidate 0 diverges in epoch 3: the best live one at its own best epoch
    assert (grid.chosen, grid.epoch, grid.live) == (2, 2, [1, 2])
    stop, _ = drive_grid(grid, [[None] * 2, [0.85, 0.85], [0.8, 0.8]], start=3)
    assert stop == 4 and grid.chosen == 2 and [c.best_epoch for c in grid.candidates[1:]] == [2, 2]


def pvera_build(spy, **settings):
    """``build`` with PVeRA, whose training samples noise: a candidate stepped in lockstep with
    others must draw exactly the noise it draws alone."""
    def build(cand):
        torch.manual_seed(0)
        bb = tiny_vit()
        adapters.apply(bb, "pvera", r=4, projection_seed=0)
        cfg = dict(SETTINGS, **settings, **{k.split(".", 1)[1]: v for k, v in cand.point.items()})
        return Trainer(Classifier(bb, 3), cfg, torch.device("cpu"), on_epoch=spy.epoch)
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
        if parts[0]["info"]["epoch"] == 2:
            raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "save_joint", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            run_protocol(p, pvera_build(EpochSpy(tmp_path), epochs=4), Spy().load, state=Spy(tmp_path).state)
    assert [f.name for f in tmp_path.iterdir()] == ["select-joint.safetensors"]
    spy = EpochSpy(tmp_path)
    out = run_protocol(p, pvera_build(spy, epochs=4), spy.load, state=spy.state)
    trained = [e[:2] for e in spy.epochs]
    assert trained[:4] == [("select-0", 1), ("select-0", 2), ("select-1", 1), ("select-1", 2)]  # replayed
    assert trained[4:] == [("select-0", 3), ("select-1", 3), ("select-0", 4), ("select-1", 4)]  # trained
    assert out.chosen == ref.chosen and out.grid_scores == ref.grid_scores
    assert torch.equal(out.test.probs, ref.test.probs)
    # committed: the grid (one record), the kept weights and the final model; the round file is gone
    assert sorted(f.name for f in tmp_path.iterdir()) == [f"candidate-{out.candidate.index}.safetensors",
                                                         "joint-grid.json", "model.json", "model.safetensors"]


def test_a_joint_grid_resumed_after_it_finished_trains_nothing(tmp_path):
    ref = run_protocol(JOINT, pvera_build(EpochSpy(), epochs=2), Spy().load)
    spy = EpochSpy(tmp_path)

    with pytest.raises(KeyboardInterrupt):
        run_protocol(JOINT, pvera_build(spy, epochs=2), killed_at_test(spy), state=spy.state)
    again = EpochSpy(tmp_path)
    out = run_protocol(JOINT, pvera_build(again, epochs=2), again.load, state=again.state)
    assert again.events == [("load", "test")]
    assert out.chosen == ref.chosen and torch.equal(out.test.probs, ref.test.probs)


def test_a_diverging_candidate_leaves_a_joint_grid():
    spy = EpochSpy()
    lrs = lambda c: pvera_build(spy, epochs=2)(Candidate(c.index, {"trainer.lr_head": c.point["lr"],  # noqa: E731
                                                                 "trainer.lr_adapter": c.point["lr"]}))
    out = run_protocol(dict(JOINT, grid={"lr": [1e30, 1e-2]}), lrs, spy.load)
    assert out.chosen == {"lr": 1e-2} and out.grid_scores[0] == {"point": {"lr": 1e30}, "status": "diverged", "epoch": 1}
    assert out.grid_scores[1]["epochs"] == 2
    with pytest.raises(DivergedError, match=r"every candidate diverged \(2 of 2\)"):
        run_protocol(dict(JOINT, grid={"lr": [1e30, 1e31]}), lrs, spy.load)


def test_a_joint_grid_scored_every_other_epoch_runs_to_its_end():
    # trainer.eval_every=2: candidates are scored after epochs 2 and 4 (and the last) only; the grid
    # reads their selections then, and keeps an epoch that was scored
    spy = EpochSpy()
    out = run_protocol(JOINT, pvera_build(spy, epochs=4, eval_every=2), spy.load)
    assert [e[1] for e in spy.epochs if e[3] is not None] == [2, 2, 4, 4]
    assert out.fit.best_epoch in (2, 4) and all(s["epochs"] == 4 for s in out.grid_scores)


def test_a_joint_grid_needs_the_best_checkpoint():
    with pytest.raises(ProtocolError, match="grid_mode=joint .* needs checkpoint: best"):
        run_protocol(dict(JOINT, checkpoint="last"), None, None)


# -- end to end: a run killed (SIGKILL) at every stage, restarted each time ----------------------
CHILD = r'''
"""pvera-bench, killed (SIGKILL, no clean-up) at the stage named by $KILL_AT; prints each
epoch it trains ("TRAINED <fit> <epoch>")."""
import os, signal, sys
from pvera_bench import checkpoint, results, train
from pvera_bench.checkpoint import RunState

def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)

step = train.FitLoop.step
def trained(self):
    entry = step(self)
    print("TRAINED", self.tag, entry["epoch"], flush=True)
    return entry
train.FitLoop.step = trained
kind, _, arg = os.environ.get("KILL_AT", "").partition(":")
if kind == "save":  # right after the checkpoint <file> of epoch 1
    save = checkpoint.save
    def save_then_die(path, state):
        save(path, state)
        if path.name == arg and state["info"]["epoch"] == 1:
            die()
    checkpoint.save = save_then_die
elif kind == "round":  # right after a joint grid's round file of epoch 1
    save_joint = checkpoint.save_joint
    def round_then_die(path, parts, extra, info):
        save_joint(path, parts, extra, info)
        die()
    checkpoint.save_joint = round_then_die
elif kind == "commit":  # right after the run state's file <arg>.json is written
    put = RunState.put_json
    def put_then_die(self, name, obj):
        put(self, name, obj)
        if name == arg:
            die()
    RunState.put_json = put_then_die
elif kind == "predict":  # in the evaluation pass whose stream starts with <arg>
    predict = train.Trainer.predict
    def predict_or_die(self, split, *, stream="eval", progress=True):
        if stream.startswith(arg):
            die()
        return predict(self, split, stream=stream, progress=progress)
    train.Trainer.predict = predict_or_die
elif kind == "append":  # record.json written, the CSV row not yet
    results.append = lambda *a, **k: die()
from pvera_bench.cli import main
sys.exit(main())
'''


def run_killed_at(tmp_path, stages, args, env):
    """Run ``args`` killed at each of ``stages`` in turn, then to its end; returns every
    (fit, epoch) trained across the processes and the last process's output."""
    import subprocess
    import sys

    child = tmp_path / "child.py"
    child.write_text(CHILD)
    trained, out = [], ""
    for stage in [*stages, ""]:
        p = subprocess.run([sys.executable, str(child), *args], cwd=tmp_path, env=dict(env, KILL_AT=stage),
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == (-9 if stage else 0), (stage, p.returncode, p.stderr[-3000:])
        trained += [tuple(line.split()[1:]) for line in p.stdout.splitlines() if line.startswith("TRAINED")]
        out = p.stdout + p.stderr
    return sorted(trained), out


def kill_env(cache_dir):
    import os

    return dict(os.environ, HF_HUB_OFFLINE="1", PVERA_BENCH_CACHE=str(cache_dir), OMP_NUM_THREADS="1",
                PYTHONUNBUFFERED="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))


KILL_BASE = ["adapter=pvera", "adapter.inference=mc", "adapter.mc_samples=4", "adapter.r=8", "task=demo",
             "backbone=vit_tiny_random", "trainer.epochs=2", "trainer.batch_size=64", "trainer.warmup_epochs=0",
             "runtime.progress=false", "runtime.threads=1", "runtime.checkpoint_every=1", "ood_task=demo",
             "++protocol.grid={trainer.lr_adapter:[3e-3,1e-2]}"]


@pytest.mark.slow
@pytest.mark.parametrize("mode,stages", [
    ("separate", ["save:select-0.safetensors", "save:final.safetensors", "predict:test", "predict:ood/", "append"]),
    ("joint", ["round", "commit:joint-grid", "save:final.safetensors", "commit:model", "predict:ood/"]),
])
def test_a_run_killed_at_every_stage_trains_nothing_twice_and_records_the_uninterrupted_numbers(
        tmp_path, cache_dir, mode, stages):
    from pvera_bench import results

    env = kill_env(cache_dir)
    args = [*KILL_BASE, "protocol=vtab", f"protocol.grid_mode={mode}"]
    if mode == "joint":  # the PVeRA code's rule: each candidate's best epoch by the validation loss
        args += ["protocol.checkpoint=best", "protocol.metric=loss"]
    (tmp_path / "ref").mkdir()
    ref_trained, _ = run_killed_at(tmp_path / "ref", [], [*args, "results_csv=ref.csv"], env)
    trained, out = run_killed_at(tmp_path, stages, [*args, "results_csv=killed.csv"], env)
    assert len(ref_trained) == 6  # two candidates and the final fit, two epochs each
    assert trained == ref_trained  # every epoch of every fit trained once, across all the processes
    assert ("appending it" in out) == (stages[-1] == "append")  # the last restart only appended the row
    (a,), (b,) = results.read(tmp_path / "killed.csv"), results.read(tmp_path / "ref" / "ref.csv")
    assert a["status"] == b["status"] == "ok"
    for col in ("test_acc", "test_nll", "test_ece", "ood_auroc", "chosen", "grid_scores", "epochs", "best_epoch",
                "val_acc", "val_loss"):
        assert a[col] == b[col], col
    pa, pb = (np.load(Path(r["run_dir"]) / "predictions.npz")["probs"] for r in (a, b))
    assert np.array_equal(pa, pb)
    assert not list((tmp_path / "checkpoints").iterdir())  # no state left behind
    # the history of the run that recorded the row holds every epoch of every fit once
    import csv

    hist = list(csv.DictReader(open(Path(a["run_dir"]) / "history.csv")))
    assert sorted((r["fit"], int(r["epoch"])) for r in hist) == [(f, e) for f in ("final", "select-0", "select-1")
                                                                for e in (1, 2)]
    # one run recorded (restarts that only appended leave a copy marked skipped): rebuild adds nothing
    assert results.rebuild([tmp_path / "outputs"], tmp_path / "killed.csv") == (1, 0)
