"""The results CSV: one row per run, appended with a single ``O_APPEND`` write; nothing else writes it.

A run's ``record.json`` in its run directory is written first and is the source of truth; the CSV
is an index of those records that ``pvera-bench results rebuild`` can regenerate or complete.

Appending encodes the row as one CSV line (its cells in the file's header order) and writes it
with one ``os.write`` on a descriptor opened with ``O_APPEND``, then fsyncs: nothing already in the
file is read back or rewritten, so a concurrent writer can never lose a recorded row. The writer
also holds ``<csv>.lock`` (``filelock``) where locks work; on filesystems whose locks are per node
(NFS ``nolock``/``local_lock``, some Lustre setups) the ``O_APPEND`` write alone keeps lines whole.
A new file gets its header and first row in one file written beside it and hard-linked into
place, so that it appears whole and only one writer creates it, locks or not (see ``_create``). Header upgrade: a file whose header lacks one of :data:`COLUMNS` (written by
an older version) or a column the row fills is rewritten ONCE, under the lock, to a temporary file
renamed over it (old rows keep their cells, new cells empty, unknown columns kept); every later
append is a plain ``O_APPEND`` write. Do that first append after an upgrade while no other node is
writing (a writer on another node without a shared lock could otherwise append to the replaced
file; its ``record.json`` still has the row and ``results rebuild`` restores it).
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
    "chosen", "grid_scores", "adapter_options", "recipe", "trainer", "data_source", "setting", "config_hash",
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


def _encode(fields: list[str], rows: list[Mapping[str, Any]], header: bool = False) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, restval="", extrasaction="ignore", lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _header(path: Path) -> list[str]:
    """The column names of the file's first line ([] for a missing or empty file)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return next(csv.reader([f.readline()]), [])
    except FileNotFoundError:
        return []


def _write_all(fd: int, data: bytes) -> None:
    n = os.write(fd, data)  # one write: O_APPEND places it at the end as a whole
    while n < len(data):  # pragma: no cover - a short write (disk full, signal); finish the line
        n += os.write(fd, data[n:])
    os.fsync(fd)


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def append(path: str | os.PathLike, row: Mapping[str, Any]) -> None:
    """Append ``row`` to the CSV at ``path`` as one ``O_APPEND`` write (a new file gets the header
    in the same write); an old file lacking columns is upgraded once first (module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cells = {k: _cell(v) for k, v in row.items()}
    with _lock(path):
        header = _header(path)
        if not header:
            if _create(path, cells):
                return
            header = _header(path)  # another node created it just now
        missing = [c for c in COLUMNS if c not in header] + [c for c in cells if c not in header and c not in COLUMNS]
        if missing:
            _upgrade(path, header + missing)
            header = header + missing
        data = _encode(header, [cells]).encode("utf-8")
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn last line (disk full): keep ours whole
                data = b"\n" + data
            _write_all(fd, data)
        finally:
            os.close(fd)


def _create(path: Path, cells: dict[str, str]) -> bool:
    """Create the file with its header and first row; False if another writer has created it.

    The file is written beside ``path`` and hard-linked to it (``link`` fails when ``path``
    exists): it appears whole or not at all, so two writers without a shared lock can never both
    write a header (creating an empty file first and writing into it leaves a moment in which a
    second writer sees it empty). An existing EMPTY file (made by hand, or by an older version) is
    replaced while it is still empty; two writers racing on such a file can make one of their two
    rows the loser of the rename (its ``record.json`` keeps it: ``results rebuild``), never two
    headers. Where hard links are not supported the file is created with ``O_EXCL`` instead."""
    data = _encode(list(COLUMNS) + [c for c in cells if c not in COLUMNS], [cells], header=True).encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        try:
            os.fchmod(fd, _new_file_mode())
            _write_all(fd, data)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            pass
        except OSError:  # no hard links here (some network or FUSE filesystems)
            return _create_excl(path, data)
        try:
            empty = path.stat().st_size == 0
        except FileNotFoundError:  # removed just now: try once more from the start
            return _create(path, cells)
        if not empty:
            return False
        os.replace(tmp, path)
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _create_excl(path: Path, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o666)
    except FileExistsError:
        return False
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)
    return True


def _upgrade(path: Path, fields: list[str]) -> None:
    """Rewrite the file once with header ``fields`` (atomic rename; callers hold the lock)."""
    _, rows = _read(path)
    if any(EXTRA in r for r in rows) and EXTRA not in fields:
        fields = fields + [EXTRA]
    for r in rows:
        if isinstance(r.get(EXTRA), list):
            r[EXTRA] = _cell(r[EXTRA])
    _atomic_write(path, _encode(fields, rows, header=True))


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it and rename it over ``path``,
    keeping ``path``'s permissions (a new file gets the umask's, as ``open`` would give it)."""
    mode = path.stat().st_mode & 0o777 if path.exists() else _new_file_mode()
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



# -- rebuilding the CSV from the runs' records, and checking it -------------------------------------

def code_identity(versions_cell: str | None) -> str:
    """``0.1.0+g1a2b3c4d5e6f[.dirty]`` from a row's ``versions`` JSON (the package version, and the
    git commit when it ran from a checkout); '' when the row has none."""
    try:
        v = json.loads(versions_cell or "")
    except ValueError:
        return str(versions_cell or "")
    if not isinstance(v, dict):
        return ""
    ident = str(v.get("pvera-bench", ""))
    if v.get("pvera-bench-commit"):
        ident += "+g" + str(v["pvera-bench-commit"])[:12] + (".dirty" if v.get("pvera-bench-dirty") else "")
    return ident


def row_identity(row: Mapping[str, Any]) -> tuple[str, str, str]:
    """What tells one recorded run from another: its directory, start time and settings key."""
    return (str(row.get("run_dir") or ""), str(row.get("timestamp") or ""), str(row.get("config_hash") or ""))


def run_records(dirs: list[str | os.PathLike]) -> list[tuple[Path, dict[str, Any]]]:
    """Every ``record.json`` in or under ``dirs`` (records of skipped runs, which copy an earlier
    row, left out), oldest first."""
    seen: set[Path] = set()
    out = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise FileNotFoundError(f"run directory {d} does not exist")
        for p in sorted(d.rglob("record.json")):
            if p.resolve() in seen:
                continue
            seen.add(p.resolve())
            try:
                rec = json.loads(p.read_text(encoding="utf-8"))
            except ValueError as e:
                raise ValueError(f"{p} is not valid JSON ({e}); move it away or repair it") from None
            if isinstance(rec, dict) and not rec.get("skipped"):
                out.append((p, rec))
    return sorted(out, key=lambda pr: str(pr[1].get("timestamp", "")))


def rebuild(dirs: list[str | os.PathLike], out: str | os.PathLike) -> tuple[int, int]:
    """Append to ``out`` every run record under ``dirs`` that it lacks; returns (found, added)."""
    out = Path(out)
    have = {row_identity(r) for r in (read(out) if out.exists() else [])}
    found = run_records(dirs)
    added = 0
    for _, rec in found:
        ident = row_identity(rec)
        if ident in have:
            continue
        append(out, rec)
        have.add(ident)
        added += 1
    return len(found), added


def _run_dir_exists(run_dir: str, csv_path: Path) -> bool:
    p = Path(run_dir)
    return p.is_dir() or (not p.is_absolute() and (csv_path.parent.parent / p).is_dir())


def latest_by_key(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The last row (in file order: appends land in the order runs ended) of each ``config_hash``;
    a row without one stands for itself. A failed run that a later run of the same settings
    superseded is thereby history, not a problem."""
    last: dict[Any, dict[str, str]] = {}
    for i, r in enumerate(rows):
        last.pop(r.get("config_hash") or ("row", i), None)  # re-insert: dict order = order of the latest rows
        last[r.get("config_hash") or ("row", i)] = r
    return list(last.values())


def check(path: str | os.PathLike) -> list[str]:
    """Problems in the CSV at ``path``, one line each (empty when there are none). Each settings key
    is judged by its latest row (:func:`latest_by_key`): a failed row followed by an ``ok`` row of
    the same key is no problem; an ``ok`` row followed by a failed one (a forced rerun) is."""
    path = Path(path)
    rows = read(path)
    latest = latest_by_key(rows)
    problems: list[str] = []
    counts: dict[tuple, int] = {}
    ok_by_key: dict[str, list[dict]] = {}
    for r in rows:
        counts[row_identity(r)] = counts.get(row_identity(r), 0) + 1
        if r.get("status") == "ok" and r.get("config_hash"):
            ok_by_key.setdefault(r["config_hash"], []).append(r)
    for ident, n in counts.items():
        if n > 1:
            problems.append(f"duplicate row: {n} copies of the run in {ident[0] or '?'} ({ident[1]}, config_hash {ident[2]})")
    for key, rs in ok_by_key.items():
        if len({row_identity(r) for r in rs}) > 1:
            dirs = ", ".join(sorted({r.get("run_dir") or "?" for r in rs}))
            problems.append(f"duplicate setting: {len(rs)} ok rows for config_hash {key} "
                            f"({rs[0].get('adapter')} {rs[0].get('task')} seed {rs[0].get('seed')}): {dirs}")
    for r in latest:
        if r.get("status") != "ok":
            problems.append(f"failed run: {r.get('adapter')} {r.get('task')} seed {r.get('seed')} in "
                            f"{r.get('run_dir') or '?'}: {r.get('error') or r.get('status') or 'no status'}")
    for r in latest:
        if r.get("run_dir") and not _run_dir_exists(r["run_dir"], path):
            problems.append(f"missing run directory: {r['run_dir']} ({r.get('adapter')} {r.get('task')} "
                            f"seed {r.get('seed')})")
    cells: dict[tuple, set[str]] = {}
    for r in latest:
        if r.get("status") != "ok":
            continue
        setting = r.get("setting") or "|".join(str(r.get(k, "")) for k in ("adapter", "adapter_options", "backbone", "protocol"))
        cells.setdefault((r.get("task", ""), r.get("adapter", ""), setting), set()).add(code_identity(r.get("versions")))
    for (task, adapter, setting), idents in cells.items():
        if len(idents) > 1:
            problems.append(f"mixed code versions: {adapter} on {task} (setting {setting[:16]}) has rows from "
                            f"{', '.join(sorted(i or 'unknown' for i in idents))}")
    return problems


def build_parser():
    """The parser of ``pvera-bench results rebuild|check``."""
    import argparse

    ap = argparse.ArgumentParser(prog="pvera-bench results", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, text in (("rebuild", "rebuild or complete a results CSV from run directories' record.json"),
                       ("check", "list duplicates, failed runs, missing run directories, mixed code versions")):
        sub.add_parser(name, help=text, description=text)
    rb, ck = sub.choices["rebuild"], sub.choices["check"]
    rb.add_argument("--runs", nargs="+", required=True, metavar="DIR", help="run or sweep directories (searched recursively)")
    rb.add_argument("--out", required=True, metavar="CSV", help="the CSV to create or complete (rows it has are kept)")
    ck.add_argument("--results", default="results/results.csv", metavar="CSV", help="the CSV to check")
    return ap


def main(argv: list[str] | None = None) -> int:
    """``pvera-bench results rebuild|check``."""
    import sys

    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "rebuild":
            found, added = rebuild(args.runs, args.out)
            print(f"{found} run records found; {added} rows added to {args.out}, {found - added} already there")
            return 0
        if not Path(args.results).is_file():
            raise FileNotFoundError(f"no results CSV at {args.results}; pass --results CSV")
        problems = check(args.results)
    except (FileNotFoundError, ValueError) as e:
        print(f"pvera-bench: error: {e}", file=sys.stderr)
        return 2
    n = len(read(args.results))
    for line in problems:
        print(line)
    print(f"{args.results}: {n} rows, {len(problems)} problems")
    return 1 if problems else 0
