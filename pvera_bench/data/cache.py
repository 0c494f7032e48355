"""Decoded-image cache: decode and resize a split once, memory-map it afterwards.

Layout: ``<cache_dir>/<task>/<split>-<source>-<size>px-<hash>/{images.npy,labels.npy,manifest.json}``
where ``<hash>`` covers the task, split, source, size, the source's fingerprint (TFDS: dataset
version, split string, label rule and the sizes of the version directory's files, see
:func:`files_fingerprint`; folder: the split file's bytes and every listed image's size and mtime)
and :data:`CACHE_FORMAT`.

Safety: one builder at a time per entry (``filelock`` on ``<entry>.lock``); a build writes into
``<entry>.tmp-*``, fsyncs, and renames the directory into place, so an entry either is complete or
does not exist. An entry is used only if its manifest matches (key, sizes, file length, a CRC of
the labels and of a sample of image rows); otherwise it is removed and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
import zlib
from pathlib import Path

import numpy as np

from .core import DEFAULT_RESIZE, DataError, Split, SplitReader, materialize

CACHE_FORMAT = 1
SAMPLE_ROWS = 32
log = logging.getLogger(__name__)


def cache_key(*, task: str, split: str, source: str, img_size: int, fingerprint: str,
              resize: str = DEFAULT_RESIZE) -> dict:
    return {"format": CACHE_FORMAT, "task": task, "split": split, "source": source, "img_size": int(img_size),
            "resize": resize, "fingerprint": fingerprint}


def files_fingerprint(directory: "str | os.PathLike") -> str:
    """sha256 of the names and sizes of the files directly in ``directory`` (a stat each): a
    re-prepared TFDS version directory with other shards gets another cache entry."""
    d = Path(directory)
    try:
        items = sorted((p.name, p.stat().st_size) for p in d.iterdir() if p.is_file())
    except OSError:
        return "unavailable"
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def entry_dir(cache_dir: "str | os.PathLike", key: dict) -> Path:
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key["task"])
    return Path(cache_dir).expanduser() / safe / f"{key['split']}-{key['source']}-{key['img_size']}px-{h}"


def _sample_rows(n: int) -> list[int]:
    return sorted(set(np.linspace(0, n - 1, num=min(n, SAMPLE_ROWS)).round().astype(int).tolist()))


def _row_crcs(images: np.ndarray, rows: list[int]) -> list[int]:
    return [zlib.crc32(np.ascontiguousarray(images[i]).tobytes()) for i in rows]


def open_entry(path: Path, key: dict, n: int) -> Split | None:
    """The cached split at ``path`` if it is complete and matches ``key``; else None."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        s = key["img_size"]
        if manifest.get("key") != key or manifest.get("n") != n:
            return None
        if (path / "images.npy").stat().st_size != manifest["images_bytes"]:
            return None
        images = np.load(path / "images.npy", mmap_mode="r")
        labels = np.load(path / "labels.npy")
        if images.dtype != np.uint8 or images.shape != (n, s, s, 3):
            return None
        if labels.dtype != np.int64 or labels.shape != (n,) or zlib.crc32(labels.tobytes()) != manifest["labels_crc"]:
            return None
        if _row_crcs(images, manifest["rows"]) != manifest["row_crcs"]:
            return None
        return Split(images, labels)
    except Exception:  # noqa: BLE001 - missing, truncated, unparsable: all mean "not usable"
        return None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - directories on some filesystems
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def cached_split(reader: SplitReader, *, task: str, split: str, source: str, img_size: int,
                 cache_dir: "str | os.PathLike", resize: str = DEFAULT_RESIZE) -> Split:
    """``reader``'s split resized to ``img_size`` with ``resize``, from the cache (memory-mapped) or
    decoded into it."""
    from filelock import FileLock, Timeout

    key = cache_key(task=task, split=split, source=source, img_size=img_size, fingerprint=reader.fingerprint,
                    resize=resize)
    path = entry_dir(cache_dir, key)
    n = len(reader)
    hit = open_entry(path, key, n)
    if hit is not None:
        return hit
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the image cache directory {path.parent}: {e}; set data.cache_dir=PATH "
                        f"(or data.cache_dir=null to not cache)") from None
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("another process is building the image cache %s; waiting for it", path)
        lock.acquire()
    try:
        hit = open_entry(path, key, n)  # another process may have built it while we waited
        if hit is not None:
            return hit
        if path.exists():
            log.warning("image cache %s is incomplete or corrupt; rebuilding it", path)
            _remove(path)
        for stale in path.parent.glob(path.name + ".tmp-*"):  # left by a killed build (we hold the lock)
            _remove(stale)
        reader.validate()
        need = n * img_size * img_size * 3 + n * 8 + (1 << 16)
        free = shutil.disk_usage(path.parent).free
        if free < need:
            raise DataError(f"the image cache for {task} {split} needs {need / 2**30:.2f} GiB in {path.parent}, "
                            f"only {free / 2**30:.2f} GiB free; free space, set data.cache_dir=PATH elsewhere, "
                            f"or data.cache_dir=null to decode without caching")
        _build(reader, key, path, n, img_size)
    finally:
        lock.release()
    hit = open_entry(path, key, n)
    if hit is None:
        raise DataError(f"the image cache just written at {path} fails verification; check the disk, remove "
                        f"{path} and try again")
    return hit


def _build(reader: SplitReader, key: dict, path: Path, n: int, img_size: int) -> None:
    tmp = path.parent / f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    t0 = time.time()
    try:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                           shape=(n, img_size, img_size, 3))
        labels = materialize(reader, img_size, images, progress=f"decoding {key['task']} {key['split']}",
                             resize=key["resize"])
        images.flush()
        rows = _sample_rows(n)
        row_crcs = _row_crcs(images, rows)
        del images
        np.save(tmp / "labels.npy", labels)
        manifest = {"key": key, "n": n, "shape": [n, img_size, img_size, 3], "dtype": "uint8",
                    "images_bytes": (tmp / "images.npy").stat().st_size,
                    "labels_crc": zlib.crc32(labels.tobytes()), "rows": rows, "row_crcs": row_crcs,
                    "source": reader.description, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "build_seconds": round(time.time() - t0, 3)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        for f in ("images.npy", "labels.npy", "manifest.json"):
            _fsync(tmp / f)
        _fsync(tmp)
        os.rename(tmp, path)
        _fsync(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("cached %s %s (%d images, %.1f s) at %s", key["task"], key["split"], n, time.time() - t0, path)
