"""The trainer's fast paths give the same answers as the slow ones (nothing here is timed).

(a) ``Trainer.predict`` merges mergeable adapters into the frozen weights for the evaluation
pass: its predictions equal an unmerged pass, and the weights are restored bit for bit after.
(b) Linear probing runs the frozen backbone once per distinct split and trains the head on the
cached features: fitting several epochs with validation and predicting again costs one
backbone pass per split.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import timm
import torch

from pvera_bench import adapters
from pvera_bench.backbones import Classifier
from pvera_bench.data import Split
from pvera_bench.train import Trainer

D, CLASSES, SIZE = 32, 5, 32
OPTIONS = {"lora": dict(r=4), "dora": dict(r=4), "vera": dict(r=16), "pvera": dict(r=16), "ia3": {}}
MERGEABLE = tuple(OPTIONS)
CFG = dict(epochs=3, batch_size=8, lr_head=1e-2, lr_adapter=1e-3, wd_head=0.0, wd_adapter=0.0,
           warmup_epochs=0, schedule="cosine", min_lr=0.0, shuffle=True, eval_every=1,
           precision="fp32", eval_batch_size=256, progress=False)



def tiny_classifier(name: str, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    bb = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=SIZE,
                           patch_size=8, embed_dim=D, depth=2, num_heads=2)
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():  # non-zero biases (timm starts them at 0): merging must handle them
        for n, p in bb.named_parameters():
            if n.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    adapters.apply(bb, name, **OPTIONS.get(name, {}))
    model = Classifier(bb, CLASSES)
    with torch.no_grad():  # move every trainable tensor off its init, so the adapter changes the output
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def split(n: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8),
                 rng.integers(0, CLASSES, n).astype(np.int64))


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# (a) merged evaluation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MERGEABLE)
def test_predict_merges_and_matches_unmerged(name, monkeypatch):
    model = tiny_classifier(name)
    assert adapters.fully_mergeable(model)
    data = split(24, seed=1)
    trainer = Trainer(model, dict(CFG, eval_batch_size=10), torch.device("cpu"))
    assert not trainer.frozen_features

    # the unmerged reference, by hand
    model.eval()
    with torch.inference_mode():
        ref = model(torch.from_numpy(data.images)).float().softmax(-1)
    before = snapshot(model)

    merges = []
    real_merge = adapters.merge

    def spy(m):
        n = real_merge(m)
        merges.append(n)
        return n

    monkeypatch.setattr(adapters, "merge", spy)
    pred = trainer.predict(data, progress=False)

    assert merges and merges[0] > 0, "predict did not merge a fully mergeable adapter"
    torch.testing.assert_close(pred.probs, ref, rtol=1e-4, atol=1e-5)
    assert torch.equal(pred.probs.argmax(-1), ref.argmax(-1))
    # and the weights are unmerged afterwards, bit for bit
    assert not any(m.merged for m in adapters.adapter_layers(model))
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    # the merge really changed the output path: a merged forward differs from the frozen backbone
    with torch.inference_mode():
        adapters.merge(model)
        merged_out = model(torch.from_numpy(data.images[:4]))
        adapters.unmerge(model)
        torch.testing.assert_close(merged_out.softmax(-1), ref[:4], rtol=1e-4, atol=1e-5)


def test_predict_leaves_non_mean_pvera_unmerged(monkeypatch):
    """PVeRA in ``fixed`` mode cannot merge: predict runs it unmerged and changes nothing."""
    model = tiny_classifier("pvera")
    adapters.set_inference(model, "fixed")
    assert not adapters.fully_mergeable(model)
    data = split(12, seed=2)
    trainer = Trainer(model, CFG, torch.device("cpu"))
    model.eval()
    with torch.inference_mode():
        ref = model(torch.from_numpy(data.images)).softmax(-1)
    before = snapshot(model)
    pred = trainer.predict(data, progress=False)
    torch.testing.assert_close(pred.probs, ref, rtol=1e-5, atol=1e-6)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# --------------------------------------------------------------------------------------------
# (b) linear probing: one backbone pass per split
# --------------------------------------------------------------------------------------------
def test_linear_probe_runs_the_backbone_once_per_split():
    model = tiny_classifier("linear_probe")
    train, val, test = split(40, seed=3), split(16, seed=4), split(20, seed=5)
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    trainer = Trainer(model, CFG, torch.device("cpu"))
    assert trainer.frozen_features

    fit = trainer.fit(train, val, select="loss")  # 3 epochs, validation after each
    assert fit.epochs == 3 and len(fit.history) == 3 and "val_loss" in fit.history[-1]
    assert trainer.feature_passes == 2 and len(calls) == 2
    trainer.predict(val, progress=False)
    pred = trainer.predict(test, progress=False)
    trainer.predict(test, progress=False)
    # one pass each over train, val and test (eval_batch_size exceeds every split: one call each)
    assert trainer.feature_passes == 3
    assert calls == [len(train), len(val), len(test)]

    # the cached features give what a direct pass gives
    model.eval()
    with torch.inference_mode():
        direct = model(torch.from_numpy(test.images)).softmax(-1)
    torch.testing.assert_close(pred.probs, direct, rtol=1e-5, atol=1e-6)


def test_linear_probe_cache_is_per_split_object():
    """A different split object with other contents is a new split; a second fit reuses the cache."""
    model = tiny_classifier("linear_probe")
    train, val = split(24, seed=6), split(8, seed=7)
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    trainer = Trainer(model, dict(CFG, eval_batch_size=10), torch.device("cpu"))
    trainer.fit(train, val)
    trainer.fit(train, val)
    assert trainer.feature_passes == 2
    assert sum(calls) == len(train) + len(val)  # batches of 10: several calls, each image once
    other = split(8, seed=8)
    trainer.predict(other, progress=False)
    assert trainer.feature_passes == 3 and sum(calls) == len(train) + len(val) + len(other)
