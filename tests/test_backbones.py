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


def test_mean_and_std_override_the_weights_own():
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    bb = create_backbone(dict(TINY, mean=mean, std=std))
    assert tuple(bb.pretrained_cfg["mean"]) == tuple(mean) and tuple(bb.pretrained_cfg["std"]) == tuple(std)
    model = Classifier(bb, 3)
    x = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    ref = bb((x.permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1))
             / torch.tensor(std).view(1, 3, 1, 1))
    torch.testing.assert_close(model.features(x), ref, atol=1e-5, rtol=1e-5)
    own = create_backbone(dict(TINY, mean=None, std=None)).pretrained_cfg
    assert tuple(own["mean"]) != tuple(mean)  # null: the weights' own (timm's for this model)


def test_drop_path_rate_follows_timms_rule_and_acts_in_training_only():
    bb = create_backbone(dict(TINY, drop_path_rate=0.1))
    probs = [getattr(blk.drop_path1, "drop_prob", 0.0) for blk in bb.blocks]
    assert probs == pytest.approx([0.0, 0.1])  # linear from 0 in the first block to the rate in the last
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        bb.train()
        assert not torch.equal(bb(x), bb(x))  # samples are dropped at random in training
        bb.eval()
        assert torch.equal(bb(x), bb(x))
        plain = create_backbone(dict(TINY, drop_path_rate=0.0)).train()
        assert torch.equal(plain(x), plain(x))


@pytest.mark.parametrize("key, value, match", [
    ("drop_path_rate", 1.0, r"backbone.drop_path_rate=1.0 is not valid"),
    ("drop_path_rate", -0.1, r"backbone.drop_path_rate=-0.1 is not valid"),
    ("mean", [0.5, 0.5], r"backbone.mean=\[0.5, 0.5\] is not valid; give three numbers"),
    ("std", [0.2, 0.0, 0.2], r"backbone.std=.* is not valid; give three positive numbers"),
    ("std", "imagenet", r"backbone.std='imagenet' is not valid"),
])
def test_bad_backbone_options_are_clear_errors(key, value, match):
    with pytest.raises(BackboneError, match=match):
        create_backbone(dict(TINY, **{key: value}))


def test_checkpoint_checksum_and_package_path(tmp_path):
    from pvera_bench.backbones import PACKAGE_PREFIX, checkpoint_path, sha256_file

    torch.manual_seed(7)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in create_backbone(TINY).state_dict().items()}, str(path))
    good = sha256_file(path)
    import hashlib
    assert good == hashlib.sha256(path.read_bytes()).hexdigest()
    create_backbone(dict(TINY, checkpoint=str(path), checkpoint_sha256=good))  # loads
    with pytest.raises(BackboneError, match="has sha256 .* not the 0{64}"):
        create_backbone(dict(TINY, checkpoint=str(path), checkpoint_sha256="0" * 64))
    # package:REL is a file inside the installed pvera_bench package, whatever the working directory
    import pvera_bench
    from pathlib import Path
    assert checkpoint_path(PACKAGE_PREFIX + "backbones.py") == Path(pvera_bench.__file__).resolve().parent / "backbones.py"
    assert checkpoint_path(str(path)) == path
