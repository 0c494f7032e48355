"""The demo task: scikit-learn's bundled 8x8 digits (real images, no download).

1,797 images in the order scikit-learn ships them: the first 800 are train800, the next 200
val200, the remaining 797 test.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .core import DataError, Split, register_source, resize_uint8

SPLITS = {"train800": slice(0, 800), "val200": slice(800, 1000), "train800val200": slice(0, 1000),
          "test": slice(1000, None)}


@register_source("sklearn_digits")
def read(task: Mapping, split: str, data_dir: str | None, img_size: int) -> Split:
    from sklearn.datasets import load_digits

    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for the demo task; valid: {', '.join(SPLITS)}")
    d = load_digits()
    sl = SPLITS[split]
    images = (d.images[sl] * (255.0 / 16.0)).round().astype(np.uint8)  # 0..16 grey -> 0..255
    return Split(resize_uint8(images, img_size), d.target[sl].astype(np.int64))
