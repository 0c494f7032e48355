"""Sources register themselves here; splits are opened (:func:`open_split`), decoded in chunks
(:func:`materialize`) and resized (:func:`resize_uint8`) with what this module defines.

A source is a function ``(task, split, data_dir) -> SplitReader``. Opening a reader is cheap (it
parses a split file or reads TFDS metadata, never decodes an image); :meth:`SplitReader.read`
decodes a range of examples. :func:`.load.load_split`, above this module and :mod:`.cache`, either
decodes everything in chunks (``cache_dir=None``) or goes through the cache, which decodes once and
memory-maps afterwards.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

SPLITS = ("train800", "val200", "train800val200", "test")
# data.resize: how images are squashed to the backbone's size (see resize_uint8)
RESIZE_METHODS = ("bilinear_antialias", "bicubic", "bilinear")
DEFAULT_RESIZE = "bilinear_antialias"
CHUNK = 256          # examples decoded and resized at a time: memory stays bounded for any split size


class DataError(RuntimeError):
    """A problem with the user's data (missing, corrupt, inconsistent): the message says what to do."""


class DataMissing(DataError):
    """The data is not there at all (not prepared, no such folder or split file)."""


class DataWarning(UserWarning):
    """Data that loads but does not match the task table (e.g. a split of unexpected size)."""


@dataclass
class Split:
    images: np.ndarray  # uint8, (N, H, W, 3), possibly a read-only np.memmap
    labels: np.ndarray  # int64, (N,)

    def __len__(self) -> int:
        return len(self.labels)


class SplitReader:
    """One split of one task, opened but not decoded.

    ``fingerprint`` identifies the underlying data (TFDS version + split string + label rule, or a
    hash of the folder's split file): the cache key includes it, so changed data is re-decoded.
    """

    fingerprint: str = ""
    cacheable: bool = True
    description: str = ""

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, start: int, stop: int) -> tuple[list[np.ndarray], np.ndarray]:
        """Decode examples ``start:stop``: a list of uint8 images (H, W[, C], any size) and int64 labels."""
        raise NotImplementedError

    def labels(self) -> np.ndarray:
        """All labels; sources override this to avoid decoding images."""
        return np.concatenate([self.read(a, min(a + CHUNK, len(self)))[1]
                               for a in range(0, len(self), CHUNK)] or [np.zeros(0, np.int64)])

    def validate(self) -> None:
        """Cheap checks run before a full decode (e.g. every image file exists); raise DataError."""


# A source opens one split of one task: (task config, split name, data_dir) -> SplitReader.
Source = Callable[[Mapping, str, "str | None"], SplitReader]
_SOURCES: dict[str, Source] = {}


def register_source(name: str) -> Callable[[Source], Source]:
    def deco(fn: Source) -> Source:
        _SOURCES[name] = fn
        return fn

    return deco


def available_sources() -> list[str]:
    return sorted(_SOURCES)


def task_name(task: Mapping) -> str:
    return str(task.get("name") or "task")


def resolve_source(task: Mapping, source: str) -> str:
    """The source a task is read from: its own ``source`` key (the demo's digits) wins."""
    return task.get("source") or source


def open_split(task: Mapping, split: str, *, source: str, data_dir: str | None) -> SplitReader:
    """The reader for ``split`` of ``task`` (no decoding). A task's own ``source`` key wins."""
    source = resolve_source(task, source)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    try:
        fn = _SOURCES[source]
    except KeyError:
        raise DataError(f"unknown data source {source!r}; valid: {', '.join(available_sources())}") from None
    return fn(task, split, data_dir)


def expected_size(task: Mapping, split: str, source: str) -> int | None:
    """The split size the task table promises for ``source`` (``<source>_sizes`` overrides ``sizes``)."""
    override = task.get(f"{source}_sizes") or {}
    if split in override:
        return int(override[split])
    sizes = task.get("sizes") or {}
    return int(sizes[split]) if split in sizes else None


def materialize(reader: SplitReader, img_size: int, out: np.ndarray, progress: str | None = None,
                resize: str = DEFAULT_RESIZE) -> np.ndarray:
    """Decode ``reader`` chunk by chunk into ``out`` (N, img_size, img_size, 3); return the labels."""
    n = len(reader)
    labels = np.empty(n, np.int64)
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=n, desc=progress, unit="img", disable=None, leave=False)
        except ImportError:  # pragma: no cover
            bar = None
    for a in range(0, n, CHUNK):
        b = min(a + CHUNK, n)
        imgs, labs = reader.read(a, b)
        if len(imgs) != b - a or len(labs) != b - a:
            raise DataError(f"{reader.description}: asked for examples {a}:{b}, got {len(imgs)} images and "
                            f"{len(labs)} labels")
        out[a:b] = resize_many(imgs, img_size, resize)
        labels[a:b] = labs
        if bar is not None:
            bar.update(b - a)
    if bar is not None:
        bar.close()
    return labels


def to_rgb(img: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 2|3|4) uint8 -> (H, W, 3): grey is tiled, alpha dropped."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise DataError(f"expected uint8 images, got {img.dtype}")
    if img.ndim == 2:
        img = img[..., None]
    c = img.shape[-1]
    if c == 3:
        return img
    if c in (1, 2):
        return np.repeat(img[..., :1], 3, axis=-1)
    if c == 4:
        return img[..., :3]
    raise DataError(f"cannot make an RGB image from shape {img.shape}")


def check_resize(resize: str) -> None:
    if resize not in RESIZE_METHODS:
        raise DataError(f"data.resize={resize!r} is not valid; use one of: {', '.join(RESIZE_METHODS)}")


def resize_many(images: Sequence[np.ndarray], size: int, resize: str = DEFAULT_RESIZE) -> np.ndarray:
    """Images of any (possibly different) sizes -> (N, size, size, 3) uint8; same shapes are batched."""
    out = np.empty((len(images), size, size, 3), np.uint8)
    groups: dict[tuple, list[int]] = {}
    rgb = [to_rgb(im) for im in images]
    for i, im in enumerate(rgb):
        groups.setdefault(im.shape, []).append(i)
    for idx in groups.values():
        out[idx] = resize_uint8(np.stack([rgb[i] for i in idx]), size, resize)
    return out


def resize_uint8(images: np.ndarray, size: int, resize: str = DEFAULT_RESIZE) -> np.ndarray:
    """Squash-resize a batch of uint8 images (N, H, W[, C]) to (N, size, size, 3) with ``resize``:

    - ``bilinear_antialias``: torch's antialiased bilinear on uint8 in channels-last layout
      (its fast path: about 0.5 ms for a 500 px image, 15x faster than going through float32);
    - ``bicubic`` / ``bilinear``: Pillow's ``Image.resize`` with that filter, image by image,
      which is what torchvision's ``Resize`` computes on PIL images (NOAH's ``Resize(...,
      interpolation=3)``, the PVeRA code's ``Resize(img_size)``).
    """
    check_resize(resize)
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[-1] == 1:
        images = np.broadcast_to(images, (*images.shape[:-1], 3))
    if tuple(images.shape[1:3]) == (size, size):  # nothing to interpolate: no torch needed
        return np.ascontiguousarray(images)

    if resize != "bilinear_antialias":
        from PIL import Image

        f = Image.Resampling.BICUBIC if resize == "bicubic" else Image.Resampling.BILINEAR
        return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(im)).resize((size, size), f))
                         for im in images])

    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)).permute(0, 3, 1, 2)  # NCHW view, NHWC memory
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return np.ascontiguousarray(y.permute(0, 2, 3, 1).numpy())


def decode_image(src: "str | os.PathLike | bytes") -> np.ndarray:
    """Decode one encoded image (a path or the file's bytes) with Pillow into uint8 RGB (H, W, 3)."""
    from PIL import Image

    fobj = io.BytesIO(src) if isinstance(src, (bytes, bytearray, memoryview)) else src
    with Image.open(fobj) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
