"""Sources register themselves; :func:`load_split` picks one, resizes, and returns uint8 arrays."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np


class DataError(RuntimeError):
    """A problem with the user's data (missing, corrupt, inconsistent): the message says what to do."""


@dataclass
class Split:
    images: np.ndarray  # uint8, (N, H, W, 3), possibly a read-only np.memmap
    labels: np.ndarray  # int64, (N,)

    def __len__(self) -> int:
        return len(self.labels)


# A source reads one split of one task: (task config, split name, data_dir, img_size) -> Split.
Source = Callable[[Mapping, str, "str | None", int], Split]
_SOURCES: dict[str, Source] = {}


def register_source(name: str) -> Callable[[Source], Source]:
    def deco(fn: Source) -> Source:
        _SOURCES[name] = fn
        return fn

    return deco


def available_sources() -> list[str]:
    return sorted(_SOURCES)


def load_split(task: Mapping, split: str, *, source: str, data_dir: str | None, img_size: int,
               cache_dir: str | None = None) -> Split:
    """Images of ``split`` (train800, val200, train800val200, test) of ``task``, resized to
    ``img_size`` x ``img_size``, as uint8 RGB. A task that names its own ``source`` (the demo)
    uses it whatever ``source`` says."""
    source = task.get("source") or source
    try:
        fn = _SOURCES[source]
    except KeyError:
        raise DataError(f"unknown data source {source!r}; valid: {', '.join(available_sources())}") from None
    return fn(task, split, data_dir, img_size)


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """Squash-resize a batch of uint8 images (N, H, W[, C]) to (N, size, size, 3), bilinear."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.ndim == 3:
        x = x[..., None]
    if x.shape[-1] == 1:
        x = x.expand(*x.shape[:-1], 3)
    if tuple(x.shape[1:3]) != (size, size):
        x = F.interpolate(x.permute(0, 3, 1, 2).float(), size=(size, size), mode="bilinear",
                          align_corners=False, antialias=True)
        x = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return np.ascontiguousarray(x.numpy())
