"""The one entry point of the data package: :func:`load_split` (above :mod:`.core`, the sources
and decoding, and :mod:`.cache`, the decoded-image cache)."""

from __future__ import annotations

import warnings
from typing import Mapping

import numpy as np

from .cache import cached_split
from .core import (DEFAULT_RESIZE, DataError, DataWarning, Split, check_resize, expected_size, materialize,
                   open_split, resolve_source, task_name)


def load_split(task: Mapping, split: str, *, source: str, data_dir: str | None, img_size: int,
               cache_dir: str | None = None, resize: str = DEFAULT_RESIZE) -> Split:
    """Images of ``split`` (train800, val200, train800val200, test) of ``task``, resized to
    ``img_size`` x ``img_size`` with ``resize`` (see :func:`resize_uint8`), as uint8 RGB. A task
    that names its own ``source`` (the demo) uses it whatever ``source`` says. With
    ``cache_dir``, the first call decodes and stores the split there and later calls memory-map
    it (no decoding); the resize method is part of the cache key."""
    check_resize(resize)
    source = resolve_source(task, source)
    reader = open_split(task, split, source=source, data_dir=data_dir)
    if len(reader) == 0:
        raise DataError(f"{reader.description or task_name(task)}: the split {split} is empty")
    want = expected_size(task, split, source)
    if want is not None and len(reader) != want:
        warnings.warn(f"{task_name(task)} {split}: {len(reader)} examples from {reader.description or source}, "
                      f"the task table says {want}", DataWarning, stacklevel=2)
    if cache_dir and reader.cacheable:
        return cached_split(reader, task=task_name(task), split=split, source=source, img_size=img_size,
                            cache_dir=cache_dir, resize=resize)
    reader.validate()
    images = np.empty((len(reader), img_size, img_size, 3), np.uint8)
    labels = materialize(reader, img_size, images, resize=resize)
    return Split(images, labels)
