"""The run directory and the one way a file of it is written.

A run directory (``RunDir``) holds ``config.yaml``, ``record.json`` (the run's result, the source of
truth of its CSV row), ``predictions.npz``, ``history.csv``, ``adapter.safetensors`` (the saved
weights, :mod:`pvera_bench.artifacts`) and ``evaluations/<time>_<key>/`` (one ``RunDir`` per
re-evaluation), and the experiment trackers' files, which their libraries write (``tensorboard/``,
``mlflow.db``, wandb's directory). The run's state until its row is appended lives elsewhere
(``<runtime.checkpoint_dir>/<key>/``) and is named by ``checkpoint.RunState``. A directory built
whole (an export) is :func:`atomic_dir`.

Every file is written by :func:`atomic_write`: a temporary file in the same directory, flushed,
fsynced, renamed over the target, then the directory fsynced; a write that fails leaves the old
file (or none) and no temporary file. A full disk is :class:`DiskFullError`, one line naming the
file, its size and the free space. The CSV's appends (``results.append``) write through
:func:`write_all`, the same write primitive.

Tensor files of the run state are *sealed* (:func:`seal`): their safetensors header carries a
digest of every tensor (dtype, shape, bytes) and of the other metadata, which :func:`read_sealed`
checks, so that a truncated or corrupt file is a :class:`CorruptFileError`, never numbers.

No torch here (the report and the CSV tools import this module).
"""

from __future__ import annotations

import csv
import datetime as _dt
import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

CONFIG, RECORD, PREDICTIONS, HISTORY = "config.yaml", "record.json", "predictions.npz", "history.csv"
WEIGHTS, EVALUATIONS = "adapter.safetensors", "evaluations"
TENSORBOARD, MLFLOW_DB = "tensorboard", "mlflow.db"  # the trackers' own files (written by their libraries)

_write = os.write  # the one write primitive (tests replace it to simulate a full disk)


class DiskFullError(RuntimeError):
    """No space (or quota) left for a file: one line with the file, its size and the free space."""


class CorruptFileError(ValueError):
    """A sealed tensor file that is truncated, damaged or does not match its digests."""


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def disk_full(path: Path, needed: int) -> DiskFullError:
    try:
        free = human(shutil.disk_usage(path.parent if not path.is_dir() else path).free)
    except OSError:
        free = "unknown"
    return DiskFullError(f"disk full: could not write {path} ({human(needed)} needed, {free} free on its "
                         f"filesystem); free some space there and run the same command again")


def _full(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


def write_all(fd: int, data: bytes, path: Path) -> None:
    """Write all of ``data`` to ``fd`` (one ``write`` when the system allows, as ``O_APPEND`` needs
    to keep a line whole), then fsync. A full disk is :class:`DiskFullError` naming ``path``."""
    try:
        n = _write(fd, data)
        while n < len(data):  # a short write (disk full, signal): finish, or fail with the reason
            n += _write(fd, data[n:])
        os.fsync(fd)
    except OSError as e:
        if _full(e):
            raise disk_full(path, len(data)) from None
        raise


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - a platform without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def new_file_mode() -> int:
    """The mode ``open`` would give a new file (0666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, data: bytes | str, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (module docstring); ``path`` keeps its permissions, a
    new file gets the umask's (``mode`` overrides both). Returns ``path``."""
    path = Path(path)
    blob = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if mode is None:
            mode = path.stat().st_mode & 0o777 if path.exists() else new_file_mode()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        if _full(e):
            raise disk_full(path, len(blob)) from None
        raise
    try:
        try:
            os.fchmod(fd, mode)
            write_all(fd, blob, path)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A directory built whole: the caller fills the temporary directory this yields (beside
    ``path``); on success every file in it and the directory are fsynced and it is renamed to
    ``path`` (an existing EMPTY ``path`` is replaced), then the parent fsynced. On any error the
    temporary directory is removed and nothing appears at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        try:
            yield tmp
            for f in sorted(tmp.rglob("*")):
                if f.is_file():
                    fd = os.open(f, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            fsync_dir(tmp)
        except OSError as e:
            if _full(e):
                raise disk_full(path, sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())) from None
            raise
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


def save_npz(path: str | os.PathLike, **arrays: Any) -> Path:
    """``numpy.savez_compressed`` of ``arrays``, written atomically."""
    import numpy as np

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return atomic_write(path, buf.getvalue())


def set_aside(path: Path) -> Path:
    """Rename a damaged file out of the way (``<name>.corrupt-<time>``), kept for inspection."""
    dest = path.with_name(f"{path.name}.corrupt-{_dt.datetime.now():%Y%m%d-%H%M%S-%f}")
    os.replace(path, dest)
    return dest


# -- sealed safetensors files: a digest of every tensor in the header ---------------------------------
DIGESTS = "pvera_bench_digests"


def _header(blob: bytes) -> tuple[dict, int]:
    if len(blob) < 8:
        raise CorruptFileError(f"truncated ({len(blob)} bytes)")
    n = int.from_bytes(blob[:8], "little")
    if 8 + n > len(blob):
        raise CorruptFileError(f"truncated: its header alone needs {8 + n} bytes, the file has {len(blob)}")
    try:
        header = json.loads(blob[8:8 + n])
    except ValueError:
        raise CorruptFileError("its header is damaged (not JSON)") from None
    if not isinstance(header, dict):
        raise CorruptFileError("its header is damaged")
    return header, 8 + n


def _digests(header: Mapping[str, Any], data: memoryview) -> dict[str, str]:
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
            h = hashlib.sha256(f"{info['dtype']}{list(info['shape'])}".encode())
        except (KeyError, TypeError, ValueError):
            raise CorruptFileError(f"its header entry for {name!r} is damaged") from None
        if not 0 <= start <= end <= len(data):
            raise CorruptFileError(f"truncated: tensor {name!r} ends at byte {end} of {len(data)} data bytes")
        h.update(data[start:end])
        out[name] = h.hexdigest()
    meta = {k: v for k, v in (header.get("__metadata__") or {}).items() if k != DIGESTS}
    out["__metadata__"] = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
    return out


def seal(blob: bytes) -> bytes:
    """A safetensors file ``blob`` with the digests of its tensors and metadata in its header."""
    header, start = _header(blob)
    data = memoryview(blob)[start:]
    meta = dict(header.get("__metadata__") or {})
    meta[DIGESTS] = json.dumps(_digests(header, data), sort_keys=True)
    header["__metadata__"] = meta
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data to 8 bytes
    return len(raw).to_bytes(8, "little") + raw + bytes(data)


def read_sealed(path: Path) -> tuple[bytes, dict[str, str]]:
    """The bytes of sealed file ``path`` and its metadata (digests left out), once every digest is
    checked; :class:`CorruptFileError` (naming ``path``) when it does not hold what it was sealed with."""
    blob = Path(path).read_bytes()
    try:
        header, start = _header(blob)
        data = memoryview(blob)[start:]
        ends = [info["data_offsets"][1] for k, info in header.items() if k != "__metadata__" and isinstance(info, dict)]
        if max(ends, default=0) != len(data):
            raise CorruptFileError(f"truncated or padded: its tensors need {max(ends, default=0)} data bytes, "
                                   f"it has {len(data)}")
        meta = dict(header.get("__metadata__") or {})
        if DIGESTS not in meta:
            raise CorruptFileError("it carries no digests (written by an older version)")
        try:
            want = json.loads(meta.pop(DIGESTS))
        except ValueError:
            raise CorruptFileError("its digests are damaged") from None
        got = _digests(header, data)
        bad = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        if bad:
            raise CorruptFileError(f"{len(bad)} part(s) do not match their digests ({', '.join(bad[:3])})")
    except CorruptFileError as e:
        raise CorruptFileError(f"{path} is corrupt: {e}") from None
    return blob, meta


# -- history.csv ---------------------------------------------------------------------------------------
class HistoryCSV:
    """``on_epoch`` hook writing ``history.csv``: one line per epoch of every fit, written as it
    ends. An epoch seen again (a fit resumed from its checkpoint replays its history) replaces
    that fit's lines from that epoch on, so the file holds each epoch once, across resumes. The
    file is rewritten whole (:func:`atomic_write`) after each epoch: a kill leaves the last one."""

    COLUMNS = ("fit", "epoch", "lr", "train_loss", "train_acc", "val_acc", "val_loss", "test_acc", "seconds")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        if self.path.is_file():
            with open(self.path, newline="") as f:
                self.rows = list(csv.DictReader(f))

    def __call__(self, tag: str, entry: Mapping[str, Any]) -> None:
        row = {"fit": tag, **{k: entry.get(k, "") for k in self.COLUMNS[1:]}}
        epoch = int(entry["epoch"])
        self.rows = [r for r in self.rows if not (r["fit"] == tag and int(r["epoch"]) >= epoch)] + [row]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.COLUMNS)
        w.writeheader()
        w.writerows(self.rows)
        atomic_write(self.path, buf.getvalue())


# -- the run directory ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunDir:
    """The files of one run directory (or of one of its evaluations), and their writers."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    config = property(lambda self: self.path / CONFIG)
    record = property(lambda self: self.path / RECORD)
    predictions = property(lambda self: self.path / PREDICTIONS)
    history = property(lambda self: self.path / HISTORY)
    weights = property(lambda self: self.path / WEIGHTS)

    def evaluation(self, stamp: _dt.datetime, key: str) -> "RunDir":
        """Where one re-evaluation of this run's weights writes its record and predictions."""
        return RunDir(self.path / EVALUATIONS / f"{stamp:%Y-%m-%d_%H-%M-%S-%f}_{key[:8]}")

    @staticmethod
    def in_evaluation(path: str | os.PathLike) -> bool:
        """Whether ``path`` lies in an ``evaluations/`` directory (a re-evaluation, not a training run)."""
        return EVALUATIONS in Path(path).parts

    def write_config(self, text: str) -> Path:
        return atomic_write(self.config, text)

    def write_record(self, record: Mapping[str, Any]) -> Path:
        return write_json(self.record, record)

    def write_predictions(self, probs: Any, labels: Any) -> Path:
        """The test probabilities (float32) and labels the run's metrics are of."""
        import numpy as np

        return save_npz(self.predictions, probs=np.asarray(probs, dtype=np.float32), labels=np.asarray(labels))

    def history_writer(self) -> HistoryCSV:
        return HistoryCSV(self.history)

    def files(self) -> Iterator[Path]:
        """The files of this directory that exist (evaluations not included)."""
        for p in (self.config, self.record, self.predictions, self.history, self.weights):
            if p.exists():
                yield p


@contextmanager
def appending(path: Path) -> Iterator[int]:
    """A descriptor of ``path`` opened for ``O_APPEND``; on any error inside, the file is cut back
    to the size it had (an append is all or nothing; callers hold the file's lock)."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    size = os.fstat(fd).st_size
    try:
        yield fd
    except BaseException:
        try:
            if os.fstat(fd).st_size > size:
                os.ftruncate(fd, size)
        finally:
            os.close(fd)
        raise
    os.close(fd)
