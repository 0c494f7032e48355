"""Backbones: frozen, weights from a local file, one clear message when weights are missing."""

import time

import pytest
import torch
from safetensors.torch import save_file

from pvera_bench.backbones import BackboneError, Classifier, create_backbone

TINY = dict(name="tiny", model="vit_tiny_patch16_224", pretrained=False,
            kwargs=dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2))


def test_frozen_and_headless():
    m = create_backbone(TINY)
    assert not any(p.requires_grad for p in m.parameters())
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 32)


def test_local_checkpoint_is_loaded(tmp_path):
    torch.manual_seed(123)
    src = create_backbone(TINY)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    torch.manual_seed(0)
    m = create_backbone(dict(TINY, checkpoint=str(path)))
    for (k, a), b in zip(src.state_dict().items(), m.state_dict().values()):
        assert torch.equal(a, b), k


def test_missing_and_corrupt_checkpoint(tmp_path):
    with pytest.raises(BackboneError, match="does not exist"):
        create_backbone(dict(TINY, checkpoint=str(tmp_path / "nope.safetensors")))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a weights file")
    with pytest.raises(BackboneError, match="could not load backbone.checkpoint=.*backbone.checkpoint=PATH"):
        create_backbone(dict(TINY, checkpoint=str(bad)))


def test_offline_hub_weights_fail_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    t = time.perf_counter()
    with pytest.raises(BackboneError) as e:
        create_backbone(dict(name="vit_b16", model="vit_base_patch16_224.orig_in21k", pretrained=True))
    assert time.perf_counter() - t < 20
    msg = str(e.value)
    assert "timm/vit_base_patch16_224.orig_in21k" in msg and "backbone.checkpoint=" in msg


def test_classifier_normalises_uint8_on_device():
    bb = create_backbone(TINY)
    model = Classifier(bb, 5)
    x = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    mean = torch.tensor(bb.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(bb.pretrained_cfg["std"]).view(1, 3, 1, 1)
    ref = bb((x.permute(0, 3, 1, 2).float() / 255 - mean) / std)
    torch.testing.assert_close(model.features(x), ref, atol=1e-5, rtol=1e-5)
    assert model(x).shape == (2, 5) and model.img_size == 32
