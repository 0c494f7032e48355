"""The trainer: same seed same numbers, preempted fits resume exactly, divergence, compile fallback."""

import json
import math
import time

import numpy as np
import pytest
import torch

from pvera_bench import adapters, checkpoint
from pvera_bench.backbones import Classifier
from pvera_bench.data import Split
from pvera_bench.train import DivergedError, Trainer

from conftest import tiny_vit

SETTINGS = dict(epochs=4, batch_size=8, lr_head=1e-2, lr_adapter=1e-2, wd_head=1e-4, wd_adapter=1e-4,
                warmup_epochs=1, schedule="cosine", shuffle=True, precision="fp32", eval_batch_size=64,
                progress=False)


def split(n=32, seed=0):
    g = np.random.default_rng(seed)
    y = g.integers(0, 3, n)
    x = (g.integers(0, 60, (n, 32, 32, 3)) + (y * 60)[:, None, None, None]).astype(np.uint8)
    return Split(x, y.astype(np.int64))


def make(name="pvera", **kw):
    torch.manual_seed(0)
    bb = tiny_vit()
    adapters.apply(bb, name, **({"r": 4} if name in ("pvera", "lora") else {}))
    return Trainer(Classifier(bb, 3), dict(SETTINGS, **kw.pop("settings", {})), torch.device("cpu"), **kw)


def numbers(history):
    """A fit's history without its wall-clock seconds."""
    return [{k: v for k, v in e.items() if k != "seconds"} for e in history]


def test_same_seed_same_numbers():
    a, b = make(), make()
    fa = a.fit(split(), split(16, 1), select="acc")
    fb = b.fit(split(), split(16, 1), select="acc")
    assert numbers(fa.history) == numbers(fb.history)
    for (n, p), q in zip(a.trainable_state().items(), b.trainable_state().values()):
        assert torch.equal(p, q), n


def test_preempted_fit_resumes_where_it_stopped(tmp_path, monkeypatch):
    ref = make()
    ref_fit = ref.fit(split(), split(16, 1), select="loss")

    interrupted = make()
    ck = dict(checkpoint=tmp_path / "fit.safetensors", every=1)
    real_save = checkpoint.save

    def save_then_die(path, state):
        real_save(path, state)
        if state["info"]["epoch"] == 2:
            raise KeyboardInterrupt  # the job is preempted right after its epoch-2 checkpoint

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(split(), split(16, 1), select="loss", **ck)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "fit.safetensors"), framework="pt") as f:  # tensors and JSON, no pickle
        keys = list(f.keys())
    assert any(k.startswith("param.") for k in keys) and any(k.startswith("optim.") for k in keys)
    monkeypatch.setattr(checkpoint, "save", real_save)

    resumed = make()  # a new process: fresh model, same settings
    fit = resumed.fit(split(), split(16, 1), select="loss", **ck)
    assert numbers(fit.history) == numbers(ref_fit.history) and fit.best_epoch == ref_fit.best_epoch
    for (n, p), q in zip(ref.trainable_state().items(), resumed.trainable_state().values()):
        assert torch.equal(p, q), n
    # the last checkpoint (epoch 3) stays for its owner (RunState) to remove once the fit's result is saved
    assert checkpoint.load(tmp_path / "fit.safetensors")["epoch"] == 3


def test_divergence_raises_with_advice():
    t = make("lora", settings=dict(lr_head=1e30, lr_adapter=1e30))
    with pytest.raises(DivergedError, match="diverged.*Lower the learning rate"):
        t.fit(split())


def test_compile_falls_back_to_eager(monkeypatch):
    def broken_compile(model):
        def run(x):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    t = make("lora", compile=True)
    x = torch.from_numpy(split(4).images)
    with torch.no_grad():
        assert torch.equal(t.forward(x), t.model(x))
    assert t.forward.compiled is None
    t.fit(split(16))  # trains eagerly


# -- selection: the PVeRA code's early-stopping rule, driven by scripted validation losses ----------
from pvera_bench.rundir import HistoryCSV  # noqa: E402
from pvera_bench.selection import Selection  # noqa: E402


def drive(sel, losses):
    """Feed ``losses`` (epochs 1, 2, ...) until the rule stops; returns (stop epoch or None, best epochs)."""
    moved = []
    for epoch, loss in enumerate(losses, start=1):
        if sel.update(epoch, 50.0, loss):
            moved.append(epoch)
        if sel.should_stop:
            return epoch, moved
    return None, moved


def test_loss_falling_half_a_permille_per_epoch_moves_the_best_every_third_epoch():
    # loss_e = 0.9995^(e-1). Relative to a best set at epoch b, epoch b+k improves by 1 - 0.9995^k:
    # k=1: 0.0005, k=2: 0.00099975 (both <= 0.001), k=3: 0.0014993 (> 0.001). So the best moves at
    # epochs 1, 4, 7, ..., and the gap never reaches 20: no early stop in 100 epochs; best epoch 100.
    sel = Selection("loss", patience=20, min_rel_delta=0.001)
    stop, moved = drive(sel, [0.9995 ** (e - 1) for e in range(1, 101)])
    assert stop is None and moved == list(range(1, 101, 3)) and sel.best_epoch == 100
    assert sel.val_loss == 0.9995 ** 99


def test_falling_then_flat_loss_stops_patience_epochs_after_the_last_real_gain():
    # Falling 0.05% per epoch for epochs 1..30, then flat at the epoch-30 value. The best moves at
    # 1, 4, ..., 28 (28 = 1 + 3*9); epochs 29, 30 gain 0.0005 and 0.00099975 on it: too little; flat
    # after that. The rule stops at the first epoch e with e - 28 >= 20: epoch 48. (The old rule,
    # best moving on any gain, patience counting only large ones, stopped at epoch 21.)
    losses = [0.9995 ** (min(e, 30) - 1) for e in range(1, 101)]
    sel = Selection("loss", patience=20, min_rel_delta=0.001)
    stop, moved = drive(sel, losses)
    assert moved == list(range(1, 29, 3)) and stop == 48 and sel.best_epoch == 28
    assert sel.val_loss == losses[27]


def test_accuracy_selection_moves_on_any_strict_gain_with_zero_delta():
    sel = Selection("acc", patience=2)
    assert [sel.update(e, a, 1.0) for e, a in enumerate([10.0, 12.0, 12.0, 11.0], start=1)] == [True, True, False, False]
    assert sel.best_epoch == 2 and sel.val_acc == 12.0 and sel.should_stop  # epoch 4 - 2 >= 2


def test_selection_state_round_trips_mid_run():
    losses = [1.0, 0.9, 0.95, 0.97, 0.8999, 0.96, 0.97, 0.98]
    whole = Selection("loss", patience=3, min_rel_delta=0.01)
    stop_whole, moved_whole = drive(whole, losses)
    first = Selection("loss", patience=3, min_rel_delta=0.01)
    drive(first, losses[:4])
    second = Selection("loss", patience=3, min_rel_delta=0.01)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))  # as a checkpoint stores it
    moved = []
    for e, loss in enumerate(losses[4:], start=5):
        if second.update(e, 0.0, loss):
            moved.append(e)
        if second.should_stop:
            break
    # 0.8999 is not 1% better than 0.9: the best stays at epoch 2, and epoch 5 (5 - 2 >= 3) stops
    assert stop_whole == 5 and moved_whole == [1, 2] and e == 5 and moved == [] and second.best_epoch == 2


def test_without_a_metric_the_last_epoch_is_kept_and_nothing_stops():
    sel = Selection(None, patience=1)
    assert not any(sel.update(e, float(e), 1.0 / e) for e in range(1, 6)) and not sel.should_stop
    assert sel.val_acc == 5.0 and sel.val_loss == 0.2


# -- trainer options ----------------------------------------------------------------------------
def noah_lr(t, base=1e-2, warm_from=1e-6, floor=1e-5, warmup=2, total=6):
    if t < warmup:
        return warm_from + t * (base - warm_from) / warmup
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * t / total))


def test_epoch_schedule_steps_as_noah_does():
    # NOAH (timm 0.5.4): CosineLRScheduler(t_initial=epochs, warmup counted inside the cosine), and
    # lr_scheduler.step(epoch) after each 0-based epoch: epoch e (1-based) runs at t = max(e - 2, 0).
    t = make("lora", settings=dict(epochs=6, warmup_epochs=2, warmup_lr=1e-6, min_lr=1e-5))
    fit = t.fit(split())
    got = [e["lr"] for e in fit.history]
    want = [noah_lr(max(e - 2, 0)) for e in range(1, 7)]
    assert got == pytest.approx(want, rel=1e-12) and got[0] == got[1] == pytest.approx(1e-6)


def test_step_schedule_updates_every_step():
    # 32 images, batch 8: 4 steps an epoch; warmup 1 epoch = 4 steps; the cosine spans 6 * 4 = 24 steps.
    t = make("lora", settings=dict(epochs=6, warmup_epochs=1, warmup_lr=1e-6, min_lr=1e-5, schedule_unit="step"))
    seen = []
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append(opt.param_groups[-1]["lr"]))
    try:
        fit = t.fit(split())
    finally:
        hook.remove()
    want = [noah_lr(s, warmup=4, total=24) for s in range(24)]
    assert seen == pytest.approx(want, rel=1e-12)
    assert [e["lr"] for e in fit.history] == pytest.approx(want[::4], rel=1e-12)


def test_constant_schedule_after_warmup():
    t = make("lora", settings=dict(epochs=4, warmup_epochs=1, warmup_lr=1e-4, schedule="constant"))
    assert [e["lr"] for e in t.fit(split()).history] == pytest.approx([1e-4, 1e-4, 1e-2, 1e-2])


def test_label_smoothing_and_the_pvera_code_softmax_defect_in_the_loss():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
    y = torch.tensor([0, 1])
    logp = logits.log_softmax(-1)
    t = make("lora", settings=dict(label_smoothing=0.1))
    smoothed = -(0.9 * logp[[0, 1], y] + 0.1 * logp.mean(-1)).mean()
    assert t._loss(logits, y).item() == pytest.approx(smoothed.item(), rel=1e-6)
    d = make("lora", settings=dict(softmax_before_loss=True))
    p = logits.softmax(-1)  # the defect: the probabilities go through cross-entropy's own softmax
    assert d._loss(logits, y).item() == pytest.approx((p.exp().sum(-1).log() - p[[0, 1], y]).mean().item(), rel=1e-6)
    fit = d.fit(split(), split(16, 1), select="loss")
    pred = d.predict(split(16, 1), progress=False)
    # predict's probabilities are the model's own; only the selecting loss is the defect's
    assert torch.allclose(pred.probs.sum(-1), torch.ones(16))
    defect = (pred.probs.exp().sum(-1).log() - pred.probs[torch.arange(16), pred.labels]).mean().item()
    assert fit.history[-1]["val_loss"] == pytest.approx(defect, rel=1e-5)
    plain = make("lora").fit(split(), split(16, 1), select="loss")
    assert [e["train_loss"] for e in fit.history] != [e["train_loss"] for e in plain.history]


def test_on_epoch_hook_and_test_curve():
    calls = []
    t = make("lora", settings=dict(epochs=5), on_epoch=lambda tag, e: calls.append((tag, dict(e))))
    fit = t.fit(split(), split(16, 1), tag="final", test=split(20, 2), test_eval_every=3)
    assert [(tag, e["epoch"]) for tag, e in calls] == [("final", e) for e in range(1, 6)]
    assert [e["epoch"] for _, e in calls if "test_acc" in e] == [1, 4, 5]  # epochs 1, N+1, ... and the last
    assert {"lr", "train_loss", "train_acc", "val_acc", "val_loss", "seconds"} <= set(calls[0][1])
    assert fit.test_acc_max == max(e["test_acc"] for _, e in calls if "test_acc" in e)
    assert math.isnan(make("lora").fit(split()).test_acc_max)


def test_history_csv_keeps_each_epoch_once_across_a_resume(tmp_path):
    h = HistoryCSV(tmp_path / "history.csv")
    for e in (1, 2, 3):
        h("select-0", dict(epoch=e, lr=0.1, train_loss=1.0 / e))
    h("final", dict(epoch=1, lr=0.1, train_loss=1.0, test_acc=40.0))
    h2 = HistoryCSV(tmp_path / "history.csv")  # a resumed process: select-0 resumes after epoch 1
    h2("select-0", dict(epoch=2, lr=0.1, train_loss=0.25))
    import csv as _csv

    rows = list(_csv.DictReader(open(tmp_path / "history.csv")))
    assert [(r["fit"], r["epoch"]) for r in rows] == [("select-0", "1"), ("final", "1"), ("select-0", "2")]
    assert rows[2]["train_loss"] == "0.25" and rows[1]["test_acc"] == "40.0" and list(rows[0]) == list(HistoryCSV.COLUMNS)


def test_a_checkpoint_stamped_for_another_point_is_discarded(tmp_path, caplog):
    ref = make()
    ref_fit = ref.fit(split(), stamp={"trainer.lr_adapter": 0.01})
    other = make()
    ck = dict(checkpoint=tmp_path / "fit.safetensors", every=1)
    real_save = checkpoint.save

    def save_then_die(path, state):
        real_save(path, state)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            other.fit(split(), stamp={"trainer.lr_adapter": 0.5}, **ck)
    fresh = make()
    with caplog.at_level("WARNING"):
        fit = fresh.fit(split(), stamp={"trainer.lr_adapter": 0.01}, **ck)
    assert "discarding checkpoint" in caplog.text and "0.5" in caplog.text
    assert fit.history[0]["epoch"] == 1 and [e["train_loss"] for e in fit.history] == [e["train_loss"] for e in ref_fit.history]


def test_resumed_fit_counts_the_seconds_of_every_segment(tmp_path):
    """Each forward sleeps 5 ms (4 steps an epoch, 4 epochs, plus validation): a fit resumed after
    epoch 2 reports more seconds than its own two epochs slept, so the first segment's are counted."""
    def slow(trainer):
        trainer.model.head.register_forward_hook(lambda *a: time.sleep(0.005))
        return trainer

    ref = slow(make()).fit(split(), split(16, 1), select="loss")
    real_save = checkpoint.save
    ck = dict(checkpoint=tmp_path / "fit.safetensors", every=1)

    def save_then_die(path, state):
        real_save(path, state)
        if state["info"]["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            slow(make()).fit(split(), split(16, 1), select="loss", **ck)
    calls = []
    resumed = slow(make(on_epoch=lambda tag, e: calls.append(e["epoch"])))
    fit = resumed.fit(split(), split(16, 1), select="loss", **ck)
    assert calls == [1, 2, 3, 4]  # the earlier segment's epochs are replayed to the hook
    assert numbers(fit.history) == numbers(ref.history)
    # the resumed segment alone sleeps 2 epochs x 4 steps x 5 ms; counting the first segment too it is above 4 x 4 x 5 ms
    assert fit.seconds > 4 * 4 * 0.005 and ref.seconds > 4 * 4 * 0.005, (fit.seconds, ref.seconds)


@pytest.mark.parametrize("bad,match", [
    (dict(schedule="cosin"), r"trainer.schedule='cosin' is invalid: allowed one of cosine, constant"),
    (dict(schedule_unit="batch"), r"trainer.schedule_unit='batch' is invalid: allowed one of epoch, step"),
    (dict(label_smoothing=-0.1), r"trainer.label_smoothing=-0.1 is invalid: allowed a number >= 0 and < 1"),
    (dict(label_smoothing=1.0), r"trainer.label_smoothing=1.0 is invalid: allowed a number >= 0 and < 1"),
    (dict(min_lr=-1e-5), r"trainer.min_lr=-1e-05 is invalid: allowed a number >= 0"),
    (dict(softmax_before_loss="yes"), r"trainer.softmax_before_loss='yes' is invalid: allowed true or false"),
])
def test_a_bad_trainer_setting_is_one_clear_error(bad, match):
    from pvera_bench.train import TrainerConfigError

    with pytest.raises(TrainerConfigError, match=match):
        make("lora", settings=bad)


def test_drop_last_leaves_out_the_incomplete_batch():
    seen = []
    t = make("lora", settings=dict(drop_last=True, epochs=2))
    t.model.head.register_forward_hook(lambda m, i, o: seen.append(len(o)) if m.training else None)
    fit = t.fit(split(20))  # batch 8: two batches of 8 per epoch, the last 4 images left out
    assert seen == [8, 8, 8, 8] and len(fit.history) == 2
    seen.clear()
    make_all = make("lora", settings=dict(epochs=1))
    make_all.model.head.register_forward_hook(lambda m, i, o: seen.append(len(o)) if m.training else None)
    make_all.fit(split(20))
    assert seen == [8, 8, 4]
    with pytest.raises(ValueError, match=r"drop_last=true with trainer.batch_size=8 and 5 training images"):
        make("lora", settings=dict(drop_last=True)).fit(split(5))


def test_wd_skip_1d_exempts_biases_and_vectors_from_weight_decay():
    def decay_of(trainer):
        opt = trainer._optimizer()
        by_param = {id(p): (g["weight_decay"], g["lr"]) for g in opt.param_groups for p in g["params"]}
        return {n: by_param[id(p)] for n, p in trainer.model.named_parameters() if p.requires_grad}

    lr = dict(lr_head=1e-2, lr_adapter=1e-3, wd_head=0.5, wd_adapter=0.25)
    plain = decay_of(make("pvera", settings=lr))
    skip = decay_of(make("pvera", settings=dict(lr, wd_skip_1d=True)))
    assert plain.keys() == skip.keys() and any(n.endswith("lambda_d") for n in skip)
    for n, (wd, rate) in skip.items():
        head = n.startswith("head.")
        assert rate == (1e-2 if head else 1e-3) and plain[n] == ((0.5 if head else 0.25), rate)
        vector = n.endswith((".lambda_d", ".lambda_b")) or n == "head.bias"  # pvera's declared vectors, the bias
        assert wd == (0.0 if vector else (0.5 if head else 0.25)), n


# -- evaluation on its own random stream ---------------------------------------------------------
def mc(**settings):
    """PVeRA sampling at evaluation (inference=mc, 4 samples), seeded 1."""
    torch.manual_seed(0)
    bb = tiny_vit()
    adapters.apply(bb, "pvera", r=4, projection_seed=0, inference="mc", mc_samples=4, beta=10.0)
    return Trainer(Classifier(bb, 3), dict(SETTINGS, epochs=3, warmup_epochs=0, **settings), torch.device("cpu"), seed=1)


def losses(fit):
    return [(e["train_loss"], e["val_loss"]) for e in fit.history]


def test_scoring_the_test_split_along_a_fit_changes_nothing_it_trains_or_chooses():
    # Monte-Carlo evaluation used to draw from training's generator: a test curve changed training.
    a, b = mc(), mc()
    fa = a.fit(split(), split(16, 1), select="loss")
    fb = b.fit(split(), split(16, 1), select="loss", test=split(20, 2), test_eval_every=1)
    assert losses(fa) == losses(fb) and len({e["val_loss"] for e in fa.history}) == 3
    assert [e["epoch"] for e in fb.history if "test_acc" in e] == [1, 2, 3]
    assert torch.equal(a.predict(split(20, 2), stream="test").probs, b.predict(split(20, 2), stream="test").probs)


def test_an_evaluation_pass_depends_on_its_stream_only():
    t = mc()
    t.fit(split(), select=None)
    test = split(20, 2)
    first = t.predict(test, stream="test").probs
    t.predict(split(16, 1), stream="val/x/1")  # another pass between: no effect on this one
    torch.manual_seed(123)  # nor the global generator's state
    assert torch.equal(t.predict(test, stream="test").probs, first)
    assert not torch.equal(t.predict(test, stream="ood/x").probs, first)  # another pass: other noise
    rng = torch.get_rng_state()
    t.predict(test, stream="test")
    assert torch.equal(torch.get_rng_state(), rng)  # evaluation never advances training's generator


def test_monte_carlo_evaluation_does_not_depend_on_the_eval_batch_size():
    # fp32 CPU: 16 and 64 images per batch (4 and 16 examples x 4 samples) choose the same epoch
    # and give the same probabilities, to float rounding
    small, large = mc(eval_batch_size=16), mc(eval_batch_size=64)
    fs = small.fit(split(), split(24, 1), select="loss")
    fl = large.fit(split(), split(24, 1), select="loss")
    assert fs.best_epoch == fl.best_epoch
    assert [e["val_loss"] for e in fs.history] == pytest.approx([e["val_loss"] for e in fl.history], abs=1e-6)
    ps, pl = small.predict(split(40, 2), stream="test"), large.predict(split(40, 2), stream="test")
    assert torch.allclose(ps.probs, pl.probs, atol=1e-6, rtol=0) and torch.equal(ps.sample_preds, pl.sample_preds)
