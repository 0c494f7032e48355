"""The trainer: same seed same numbers, preempted fits resume exactly, divergence, compile fallback."""

import numpy as np
import pytest
import torch

from pvera_bench import adapters
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


def test_same_seed_same_numbers():
    a, b = make(), make()
    fa = a.fit(split(), split(16, 1), select="acc")
    fb = b.fit(split(), split(16, 1), select="acc")
    assert fa.history == fb.history
    for (n, p), q in zip(a.trainable_state().items(), b.trainable_state().values()):
        assert torch.equal(p, q), n


def test_preempted_fit_resumes_where_it_stopped(tmp_path, monkeypatch):
    ref = make()
    ref_fit = ref.fit(split(), split(16, 1), select="loss")

    interrupted = make(checkpoint_dir=tmp_path, checkpoint_every=1)
    real_save = Trainer._save_checkpoint

    def save_then_die(self, path, opt, sched, gen, best, info):
        real_save(self, path, opt, sched, gen, best, info)
        if info["epoch"] == 2:
            raise KeyboardInterrupt  # the job is preempted right after its epoch-2 checkpoint

    monkeypatch.setattr(Trainer, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(split(), split(16, 1), select="loss")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "fit.safetensors"), framework="pt") as f:  # tensors and JSON, no pickle
        keys = list(f.keys())
    assert any(k.startswith("param.") for k in keys) and any(k.startswith("optim.") for k in keys)
    monkeypatch.setattr(Trainer, "_save_checkpoint", real_save)

    resumed = make(checkpoint_dir=tmp_path, checkpoint_every=1)  # a new process: fresh model, same settings
    fit = resumed.fit(split(), split(16, 1), select="loss")
    assert fit.history == ref_fit.history and fit.best_epoch == ref_fit.best_epoch
    for (n, p), q in zip(ref.trainable_state().items(), resumed.trainable_state().values()):
        assert torch.equal(p, q), n
    assert not (tmp_path / "fit.safetensors").exists()  # removed once the fit is complete


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
