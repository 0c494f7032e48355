"""trainer.augment (pvera_bench/data/augment.py, augment_ops.py): each RandAugment op on tensors
against timm's own op on a PIL image (timm.data.auto_augment, the code V-PETL-Bench's transform
runs), the spec parser, and the batch-level draws."""


import numpy as np
import pytest
import torch
from PIL import Image

import timm.data.auto_augment as aa
from pvera_bench.data.augment import AugmentError, RandAugmentSpec, parse
from pvera_bench.data.augment import OPS
from pvera_bench.data.augment_ops import Augment, apply_ops

HPARAMS = dict(translate_pct=0.45, img_mean=(124, 116, 104), interpolation=Image.BICUBIC)  # create_transform's


def image(size: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.stack([(xx * 5) % 256, (yy * 5) % 256, ((xx + yy) * 3) % 256], -1) * 0.6
    return (img + rng.integers(0, 100, img.shape)).clip(0, 255).astype(np.uint8)


def timm_op(img: np.ndarray, name: str, magnitude: float, sign: float, monkeypatch) -> np.ndarray:
    """timm's op at ``magnitude`` with _randomly_negate forced to ``sign``."""
    monkeypatch.setattr(aa.random, "random", lambda: 0.0 if sign > 0 else 1.0)
    fn = aa.LEVEL_TO_ARG[name]
    args = () if fn is None else fn(magnitude, HPARAMS)
    out = aa.NAME_TO_OP[name](Image.fromarray(img), *args, fillcolor=HPARAMS["img_mean"], resample=Image.BICUBIC)
    return np.asarray(out).astype(np.float64)


def ours(img: np.ndarray, name: str, magnitude: float, sign: float) -> np.ndarray:
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    out = apply_ops(x, torch.tensor([OPS.index(name)]), torch.tensor([magnitude / 10]), torch.tensor([sign]))
    return out[0].permute(1, 2, 0).numpy().astype(np.float64)


def test_the_op_set_is_timms_increasing_set():
    assert list(OPS) == list(aa._RAND_INCREASING_TRANSFORMS)


# the ops that resample the image geometrically (bicubic): compared within a tolerance, not exactly
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("magnitude, sign", [(9.0, 1.0), (9.0, -1.0), (4.3, 1.0)])
def test_each_op_matches_timms_pil_op(name, magnitude, sign, monkeypatch):
    img = image()
    ref = timm_op(img, name, magnitude, sign, monkeypatch)
    diff = np.abs(ours(img, name, magnitude, sign) - ref)
    if name in GEOMETRIC:  # torch's bicubic kernel (a = -0.75) against Pillow's (a = -0.5)
        assert diff.mean() < 2.0, diff.mean()
        if name != "Rotate" or magnitude > 5:  # the opposite direction is far off: the sign is right
            other = np.abs(ours(img, name, magnitude, -sign) - ref).mean()
            assert other > 4 * diff.mean(), (other, diff.mean())
    else:  # Pillow's integer rounding against ours: at most 2 levels, mostly equal
        assert diff.max() <= 2 and diff.mean() < 0.6, (diff.max(), diff.mean())


def test_no_op_leaves_the_image():
    x = torch.from_numpy(image()).permute(2, 0, 1)[None].float()
    out = apply_ops(x, torch.tensor([-1]), torch.tensor([0.9]), torch.tensor([1.0]))
    assert torch.equal(out, x)


def test_parse():
    assert parse(None) == (False, None) and parse("none") == (False, None)
    assert parse("hflip+rand-m9-mstd0.5-inc1") == (True, RandAugmentSpec(magnitude=9, magnitude_std=0.5))
    assert parse("rand-m7-n3-p1.0-inc1") == (False, RandAugmentSpec(magnitude=7, num_layers=3, prob=1.0))
    for bad in ("vflip", "rand-m9-mstd0.5", "rand-m9-x2-inc1", "hflip+rand-m9-inc1+rand-m9-inc1"):
        with pytest.raises(AugmentError):
            parse(bad)


def test_batch_draws():
    torch.manual_seed(0)
    imgs = torch.from_numpy(np.stack([image(32, s) for s in range(400)]))  # uint8 NHWC
    flipped = Augment("hflip")(imgs)
    assert flipped.dtype == torch.uint8 and flipped.shape == imgs.shape
    same = (flipped == imgs).flatten(1).all(1)
    mirrored = (flipped == imgs.flip(2)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 0.4 < mirrored.float().mean() < 0.6
    torch.manual_seed(1)
    a = Augment("hflip+rand-m9-mstd0.5-inc1")(imgs)
    torch.manual_seed(1)
    assert torch.equal(a, Augment("hflip+rand-m9-mstd0.5-inc1")(imgs))  # the device generator decides
    changed = ~((a == imgs) | (a == imgs.flip(2))).flatten(1).all(1)
    # P(no op in 2 layers at p 0.5) = 1/4; a few drawn ops change nothing (e.g. equalize of an equalized image)
    assert 0.6 < changed.float().mean() < 0.85


def test_a_mixed_batch_equals_each_image_alone():
    """Grouping by op (a sort, then each op on its group) puts every image back in its place."""
    imgs = torch.from_numpy(np.stack([image(24, s) for s in range(8)])).permute(0, 3, 1, 2).float()
    op = torch.tensor([OPS.index("Rotate"), -1, OPS.index("Equalize"), OPS.index("Rotate"), OPS.index("SolarizeAdd"),
                       -1, OPS.index("ShearY"), OPS.index("ColorIncreasing")])
    level = torch.linspace(0.2, 0.9, 8)
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, 1.0, -1.0, -1.0])
    batch = apply_ops(imgs, op, level, sign)
    for i in range(8):
        alone = apply_ops(imgs[i:i + 1], op[i:i + 1], level[i:i + 1], sign[i:i + 1])
        torch.testing.assert_close(batch[i:i + 1], alone)
    assert torch.equal(batch[1], imgs[1]) and torch.equal(batch[5], imgs[5])
