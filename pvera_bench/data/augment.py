"""Training augmentation on the device, on batches of cached uint8 images (``trainer.augment``).

The decoded cache keeps each split resized once (``data.resize``; training splits may have their
own ``data.train_resize``), so augmentation cannot sit in a PIL pipeline before the resize as in
the sources: it runs on the resized uint8 batch, on the device, inside the training step. A spec
is ``+``-joined parts, applied in order:

- ``hflip``: horizontal flip with probability 0.5 (torchvision ``RandomHorizontalFlip``);
- ``rand-m<M>[-n<N>][-mstd<S>][-p<P>]-inc1``: timm's RandAugment as ``rand_augment_transform``
  builds it from that string (timm ``data/auto_augment.py``): per image, ``N`` (default 2) ops
  drawn uniformly with replacement from the 15 "increasing" ops (``_RAND_INCREASING_TRANSFORMS``),
  each applied with probability ``P`` (default 0.5) at a magnitude drawn from N(M, S) clipped to
  [0, 10], signed ops negated with probability 0.5, and timm's level-to-argument ranges
  (rotate 30 degrees, shear 0.3, translate 0.45 of the size, enhance 1 +- 0.9 (>= 0.1), posterize
  4 -> 0 bits, solarize threshold 256 -> 0, solarize-add 0 -> 110), geometric ops filled with
  the mean colour (124, 116, 104) and resampled bicubic (create_transform's
  ``interpolation='bicubic'`` hparam).

V-PETL-Bench's training transform (dataloader/vtab.py, ``train_aug: True``) is
``Resize((224, 224), bicubic)``, ``hflip``, ``rand-m9-mstd0.5-inc1``, ``ToTensor``, ``Normalize``:
with ``data.train_resize: bicubic`` the cache holds the first step and this module the next two,
in the same order. What is not bit-exact: the pixel arithmetic is torch's (float, rounded to
uint8 after every op) rather than Pillow's, geometric ops use ``grid_sample``'s bicubic kernel
(a = -0.75; Pillow's is a = -0.5) with the fill decided by where the source point falls, and the
random draws come from torch's generator of the device, not Python's ``random``/numpy's.

The tensor code is in :mod:`.augment_ops` (this module imports no torch: the config check uses
:func:`parse`). Everything is batched, with no loop over images: each layer groups the images by
the op they drew (one host synchronisation for the group sizes) and runs each op once on its group.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# timm auto_augment.py _RAND_INCREASING_TRANSFORMS, in its order
OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
       "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
       "TranslateXRel", "TranslateYRel")


class AugmentError(ValueError):
    """A ``trainer.augment`` spec that cannot be parsed (a user error)."""


@dataclass(frozen=True)
class RandAugmentSpec:
    magnitude: float = 10.0
    num_layers: int = 2
    magnitude_std: float = 0.0
    prob: float = 0.5


_RAND = re.compile(r"^(m|n|mstd|p|inc)(\d+(?:\.\d+)?)$")


def parse(spec: str | None) -> tuple[bool, RandAugmentSpec | None]:
    """``(hflip, randaugment)`` of a ``trainer.augment`` spec; ``(False, None)`` for none."""
    if spec in (None, "", "none"):
        return False, None
    hflip, ra = False, None
    for part in str(spec).split("+"):
        if part == "hflip":
            hflip = True
            continue
        bits = part.split("-")
        if bits[0] != "rand" or ra is not None:
            raise AugmentError(f"trainer.augment={spec!r}: unknown part {part!r}; use hflip and/or one "
                               "rand-m<M>[-n<N>][-mstd<S>][-p<P>]-inc1, joined by '+'")
        kw: dict = {}
        inc = False
        for b in bits[1:]:
            m = _RAND.match(b)
            if not m:
                raise AugmentError(f"trainer.augment={spec!r}: unknown RandAugment setting {b!r} "
                                   "(known: m, n, mstd, p, inc1)")
            key, val = m.group(1), float(m.group(2))
            if key == "inc":
                inc = val == 1
            else:
                kw[{"m": "magnitude", "n": "num_layers", "mstd": "magnitude_std", "p": "prob"}[key]] = val
        if not inc:
            raise AugmentError(f"trainer.augment={spec!r}: only timm's increasing op set is implemented; add -inc1")
        if "num_layers" in kw:
            kw["num_layers"] = int(kw["num_layers"])
        ra = RandAugmentSpec(**kw)
    return hflip, ra
