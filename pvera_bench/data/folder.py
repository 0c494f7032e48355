"""The pre-extracted "vtab-1k" folder copy (NOAH's ``get_vtab1k.py``, used by most PEFT repos).

Layout: ``<data.dir>/<folder>/{train800,val200,train800val200,test}.txt``, one example a line,
``images/<split>/000123.jpg <label>``, the path relative to ``<data.dir>/<folder>``. Labels are
already the VTAB class indices (derived labels included), so no label rule applies.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping

import numpy as np

from . import core
from .core import SPLITS, DataError, DataMissing, SplitReader, register_source, task_name


def layout_help(root: "str | os.PathLike", folder: str) -> str:
    return (f"expected the vtab-1k folder layout {Path(root) / folder}/{{{','.join(SPLITS)}}}.txt, one line "
            f"per example 'images/<split>/000123.jpg <label>' (paths relative to {Path(root) / folder}); "
            f"unpack the vtab-1k folder copy (NOAH's get_vtab1k.py) so that data.dir is the directory "
            f"holding the task folders, or use data.source=tfds")


def _decode_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


class FolderReader(SplitReader):
    def __init__(self, task: Mapping, split: str, data_dir: "str | os.PathLike | None"):
        name = task_name(task)
        folder = task.get("folder")
        if not folder:
            raise DataError(f"task {name} has no `folder` key: it cannot be read with data.source=folder")
        if data_dir is None or str(data_dir) == "":
            raise DataMissing("data.source=folder needs data.dir=PATH (the directory holding the task folders); "
                            + layout_help("<data.dir>", folder))
        root = Path(data_dir).expanduser()
        tdir = root / folder
        txt = tdir / f"{split}.txt"
        if not root.is_dir():
            raise DataMissing(f"data.dir {root} does not exist; " + layout_help(root, folder))
        if not tdir.is_dir():
            raise DataMissing(f"task {name}: folder {tdir} not found; " + layout_help(root, folder))
        if not txt.is_file():
            raise DataMissing(f"task {name}: split file {txt} not found; " + layout_help(root, folder))
        raw = txt.read_bytes()
        num_classes = int(task["num_classes"]) if task.get("num_classes") is not None else None
        self.txt, self.dir = txt, tdir
        self.paths, self.lines, labels = [], [], []
        for lineno, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.strip().rsplit(None, 1)
            if len(parts) != 2:
                raise DataError(f"{txt}:{lineno}: expected '<image path> <label>', got {line!r}")
            path, lab = parts
            try:
                label = int(lab)
            except ValueError:
                raise DataError(f"{txt}:{lineno}: label {lab!r} is not an integer (line {line!r})") from None
            if label < 0 or (num_classes is not None and label >= num_classes):
                raise DataError(f"{txt}:{lineno}: label {label} is out of range 0..{(num_classes or 1) - 1} "
                                f"for task {name} ({num_classes} classes)")
            self.paths.append(path)
            self.lines.append(lineno)
            labels.append(label)
        if not labels:
            raise DataError(f"{txt} is empty; " + layout_help(root, folder))
        self._labels = np.asarray(labels, np.int64)
        self.fingerprint = "folder:" + self._fingerprint(raw)
        self.description = str(txt)

    def _fingerprint(self, raw: bytes) -> str:
        """sha256 of the split file and every listed image's size and mtime (a stat each, no decode):
        a replaced image, or another copy with the same lists, gets another cache entry."""
        h = hashlib.sha256(raw)
        for p in self.paths:
            try:
                st = os.stat(self.dir / p)
                h.update(f"\0{st.st_size}:{st.st_mtime_ns}".encode())
            except OSError:  # missing: validate() names it before anything is decoded
                h.update(b"\0missing")
        return h.hexdigest()

    def __len__(self) -> int:
        return len(self._labels)

    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def validate(self) -> None:
        missing = [i for i, p in enumerate(self.paths) if not (self.dir / p).is_file()]
        if missing:
            i = missing[0]
            more = f" ({len(missing) - 1} more images are missing)" if len(missing) > 1 else ""
            raise DataError(f"{self.txt}:{self.lines[i]}: image {self.dir / self.paths[i]} not found{more}")

    def _decode(self, i: int) -> np.ndarray:
        path = self.dir / self.paths[i]
        try:
            return core.decode_image(path)
        except FileNotFoundError:
            raise DataError(f"{self.txt}:{self.lines[i]}: image {path} not found") from None
        except Exception as e:  # PIL.UnidentifiedImageError, truncated files, ...
            raise DataError(f"{self.txt}:{self.lines[i]}: cannot decode image {path}: {e}") from None

    def read(self, start: int, stop: int):
        idx = range(start, stop)
        if len(idx) > 8 and _decode_threads() > 1:  # Pillow releases the GIL while decoding
            with ThreadPoolExecutor(_decode_threads()) as ex:
                images = list(ex.map(self._decode, idx))
        else:
            images = [self._decode(i) for i in idx]
        return images, self._labels[start:stop]


@register_source("folder")
def open_folder(task: Mapping, split: str, data_dir: "str | None") -> FolderReader:
    return FolderReader(task, split, data_dir)
