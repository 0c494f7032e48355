"""The demo task: scikit-learn's bundled 8x8 digits (real images, no download).

1,797 images in the order scikit-learn ships them: the first 800 are train800, the next 200
val200, the remaining 797 test.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .core import DataError, SplitReader, register_source

SPLITS = {"train800": slice(0, 800), "val200": slice(800, 1000), "train800val200": slice(0, 1000),
          "test": slice(1000, None)}


class DigitsReader(SplitReader):
    cacheable = False  # 1,797 tiny images in memory: nothing to gain from a disk cache

    def __init__(self, split: str):
        from sklearn.datasets import load_digits

        if split not in SPLITS:
            raise DataError(f"unknown split {split!r} for the demo task; valid: {', '.join(SPLITS)}")
        d = load_digits()
        sl = SPLITS[split]
        self._images = (d.images[sl] * (255.0 / 16.0)).round().astype(np.uint8)  # 0..16 grey -> 0..255
        self._labels = d.target[sl].astype(np.int64)
        self.description = f"scikit-learn digits {split}"
        self.fingerprint = "sklearn_digits"

    def __len__(self) -> int:
        return len(self._labels)

    def read(self, start: int, stop: int):
        return list(self._images[start:stop]), self._labels[start:stop]

    def labels(self) -> np.ndarray:
        return self._labels.copy()


@register_source("sklearn_digits")
def open_digits(task: Mapping, split: str, data_dir: str | None) -> DigitsReader:
    return DigitsReader(split)
