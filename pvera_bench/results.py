"""The results CSV: one row per run, appended atomically under a lock; nothing else writes it.

Every append rewrites the file to a temporary name and renames it over the old one while holding
``<csv>.lock``, so a crash at any moment leaves either the old file or the new one, never a half
row, and concurrent writers (a local sweep, SLURM array jobs on a shared filesystem) queue up.
Columns are a fixed, ordered list; a file written by an older version that lacks some columns is
upgraded in place (missing cells empty), and unknown columns are kept.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from filelock import FileLock

COLUMNS = [
    "timestamp", "task", "adapter", "backbone", "protocol", "seed", "status",
    "test_acc", "test_acc_max", "val_acc", "val_loss", "test_nll", "test_ece", "test_brier",
    "mc_samples", "mc_entropy", "mc_acc_low", "mc_acc_high", "ood_task", "ood_auroc", "ood_auroc_entropy",
    "params_adapter", "params_head", "params_trainable", "frozen_buffers",
    "epochs", "best_epoch", "train_seconds", "eval_seconds",
    "chosen", "grid_scores", "adapter_options", "data_source", "config_hash",
    "overrides", "error", "run_dir", "versions",
]


EXTRA = "_extra_cells"  # where a hand-edited row's cells beyond the header are kept


def _lock(path: Path) -> FileLock:
    return FileLock(str(path) + ".lock", timeout=600)


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.exists() or path.stat().st_size == 0:
        return [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, restkey=EXTRA)  # a row with too many cells is kept, not fatal
        return list(reader.fieldnames or []), list(reader)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if v != v else repr(round(v, 6))  # NaN -> empty
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def append(path: str | os.PathLike, row: Mapping[str, Any]) -> None:
    """Append ``row`` to the CSV at ``path`` (created with a header if missing), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(path):
        header, rows = _read(path)
        fields = header or list(COLUMNS)
        fields += [c for c in COLUMNS if c not in fields]
        fields += [c for c in row if c not in fields]
        rows.append({k: _cell(v) for k, v in row.items()})
        if any(EXTRA in r for r in rows) and EXTRA not in fields:
            fields.append(EXTRA)
        for r in rows:
            if isinstance(r.get(EXTRA), list):
                r[EXTRA] = _cell(r[EXTRA])
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        _atomic_write(path, buf.getvalue())


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it and rename it over ``path``,
    keeping ``path``'s permissions (a new file gets the umask's, as ``open`` would give it)."""
    if path.exists():
        mode = path.stat().st_mode & 0o777
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read(path: str | os.PathLike) -> list[dict[str, str]]:
    path = Path(path)
    with _lock(path):
        return _read(path)[1]


def find_ok(path: str | os.PathLike, config_hash: str) -> dict[str, str] | None:
    """The last ``ok`` row recorded for ``config_hash``, if any."""
    if not Path(path).exists():
        return None
    hits = [r for r in read(path) if r.get("config_hash") == config_hash and r.get("status") == "ok"]
    return hits[-1] if hits else None


def write_json(path: str | os.PathLike, obj: Any) -> None:
    _atomic_write(Path(path), json.dumps(obj, indent=2, sort_keys=True, default=str))

