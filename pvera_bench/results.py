"""The results CSV: one row per run, appended with a single ``O_APPEND`` write; nothing else writes it.

A run's ``record.json`` in its run directory is written first and is the source of truth; the CSV
is an index of those records that ``pvera-bench results rebuild`` can regenerate or complete.

The columns are declared once, in a fixed order, with a one-line help each (:data:`ROW`); a row is
built by :func:`make_row`, which refuses a column :data:`ROW` does not declare. A new file gets
every column of :data:`ROW` in its header, so that no later row (an evaluation's calibration or
OOD columns) changes it.

Appending encodes the row as one CSV line (its cells in the file's header order) and writes it
with one ``os.write`` on a descriptor opened with ``O_APPEND``, then fsyncs: nothing already in the
file is rewritten, so a concurrent writer can never lose a recorded row. The append is all or
nothing: a write that fails (a full disk) is cut back to the file's previous size. The writer
also holds ``<csv>.lock`` (``filelock``) where locks work; on filesystems whose locks are per node
(NFS ``nolock``/``local_lock``, some Lustre setups) the ``O_APPEND`` write alone keeps lines whole.
A new file gets its header and first row in one file written beside it and hard-linked into
place, so that it appears whole and only one writer creates it, locks or not (see ``_create``).

Torn lines: a writer killed mid-line (or a disk that filled up under another tool) can leave a
last line that is not whole, possibly inside a quoted cell. Reading sets such a line aside (it is
never a row; ``results check`` and ``report`` name it); the next append first closes it (its open
quote too) and marks it with :data:`TORN`, so that it can never swallow the row appended after it.

Header upgrade: a file whose header lacks one of :data:`COLUMNS` (written by an older version) or
a column the row fills is rewritten ONCE, under the lock, to a temporary file renamed over it (old
rows keep their cells, new cells empty, unknown columns kept); every later append is a plain
``O_APPEND`` write. Do that first append after an upgrade while no other node is writing (a writer
on another node without a shared lock could otherwise append to the replaced file; its
``record.json`` still has the row and ``results rebuild`` restores it). A file whose header is not
this tool's (it lacks ``task``, ``adapter`` or ``status``) is refused (:class:`ForeignFileError`),
never rewritten.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from filelock import FileLock

from . import rundir
from .columns import COLUMNS, IDENTITY, ROW, Column, make_row  # noqa: F401 - the row type, declared once
from .csvlines import EXTRA, TORN, Table, describe_torn, is_whole, record_ends, split_cells  # noqa: F401
from .csvlines import cell as _cell, encode as _encode, parse as _parse
from .rundir import RunDir, new_file_mode, write_all


class ResultsFileError(ValueError):
    """A results file that cannot be written (a directory, a path that cannot be created): one line."""


class ForeignFileError(ResultsFileError):
    """A file that is not this tool's results CSV: refused, never rewritten."""


def _lock(path: Path) -> FileLock:
    return FileLock(str(path) + ".lock", timeout=600)


# -- reading: whole records, torn lines set aside -------------------------------------------------------
def _text(path: Path) -> str:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise ForeignFileError(f"{path} is not a pvera-bench results CSV (not UTF-8 text); it is left unchanged: "
                               "name another file") from None


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    t = read_table(path, lock=False)
    return t.header, t.rows


def read_table(path: str | os.PathLike, lock: bool = True) -> Table:
    """The file's header, its rows, and its torn lines (set aside, never rows)."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return Table([], [], [])
    if lock:
        with _lock(path):
            return _parse(_text(path))
    return _parse(_text(path))


def without_torn(path: str | os.PathLike) -> tuple[str, list[tuple[int, str]]]:
    """The file's text with each torn line blanked (its newlines kept, so line numbers hold), and
    the torn lines: what a reader of the whole file (the report) parses."""
    text = _text(Path(path))
    torn = _parse(text).torn
    for _, rec in torn:
        text = text.replace(rec, "\n" * rec.count("\n"), 1)
    return text, torn


def _header(path: Path) -> list[str]:
    """The column names of the file's first line ([] for a missing or empty file)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return next(csv.reader([f.readline()]), [])
    except FileNotFoundError:
        return []
    except UnicodeDecodeError:
        return ["\ufffd"]  # not text: foreign


def _check_ours(path: Path, header: list[str]) -> None:
    missing = [c for c in IDENTITY if c not in header]
    if header and (missing or len(set(header)) != len(header)):
        shown = ",".join(header)[:60]
        raise ForeignFileError(f"{path} is not a pvera-bench results CSV (its header {shown!r} lacks "
                               f"{', '.join(missing) or 'unique column names'}); it is left unchanged: "
                               "name another file (results_csv=... or --out)")


def check_writable(path: str | os.PathLike) -> None:
    """Refuse, before anything runs, a results file that is a directory, that cannot be created
    or written, or that is not this tool's CSV (:class:`ResultsFileError`, one line)."""
    path = Path(path)
    if path.is_dir():
        raise ResultsFileError(f"results file {path} is a directory; name a CSV file (results_csv=...)")
    if path.is_file():
        _check_ours(path, _header(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # where the file will be: made now, or refused now
        if not os.access(path if path.exists() else path.parent, os.W_OK):
            raise PermissionError(errno.EACCES, "permission denied", str(path if path.exists() else path.parent))
    except OSError as e:
        why = f"{e.filename} is a file, not a directory" if e.errno == errno.EEXIST else f"{e.strerror}: {e.filename}"
        raise ResultsFileError(f"results file {path} cannot be written ({why}); choose another results_csv=...") from None


def _closing(fd: int, header: list[str]) -> bytes:
    """What to write before a row so that the file's last line, if torn, ends as a torn line
    (:data:`TORN`) and cannot swallow the row: ``b""`` for a whole file."""
    import time

    size = -1
    for _ in range(20):  # a writer without a working lock may be mid-write: wait until the file is still
        raw = os.pread(fd, os.fstat(fd).st_size, 0)
        in_quote = raw.count(b'"') % 2 == 1
        if not in_quote and raw.endswith(b"\n") or not raw:
            return b""
        if len(raw) == size:
            break
        size = len(raw)
        time.sleep(0.05)
    text = raw.decode("utf-8", errors="replace")
    ends, in_quote = record_ends(text)
    if is_whole(text[(ends or [0])[-1]:], header, in_quote):
        return b"\n"  # a whole last row that lacks its newline (saved by hand)
    return (b'"' if in_quote else b"") + b"," + TORN.encode() + b"\n"


def append(path: str | os.PathLike, row: Mapping[str, Any]) -> None:
    """Append ``row`` to the CSV at ``path`` as one ``O_APPEND`` write (a new file gets the header
    in the same write); an old file lacking columns is upgraded once first (module docstring)."""
    path = Path(path)
    check_writable(path)
    cells = {k: _cell(v) for k, v in row.items()}
    with _lock(path):
        header = _header(path)
        if not header:
            if _create(path, cells):
                return
            header = _header(path)  # another node created it just now
        _check_ours(path, header)
        missing = [c for c in COLUMNS if c not in header] + [c for c in cells if c not in header and c not in COLUMNS]
        if missing:
            _upgrade(path, header + missing)
            header = header + missing
        data = _encode(header, [cells]).encode("utf-8")
        with rundir.appending(path) as fd:
            write_all(fd, _closing(fd, header) + data, path)


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
            os.fchmod(fd, new_file_mode())
            write_all(fd, data, path)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
            rundir.fsync_dir(path.parent)
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
        rundir.fsync_dir(path.parent)
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
        write_all(fd, data, path)
    finally:
        os.close(fd)
    return True


def _upgrade(path: Path, fields: list[str]) -> None:
    """Rewrite the file once with header ``fields`` (atomic rename; callers hold the lock). Torn
    lines are kept, after the rows, each closed and marked :data:`TORN`."""
    table = read_table(path, lock=False)
    rows = table.rows
    if any(EXTRA in r for r in rows) and EXTRA not in fields:
        fields = fields + [EXTRA]
    for r in rows:
        if isinstance(r.get(EXTRA), list):
            r[EXTRA] = _cell(r[EXTRA])
    torn = "".join(rec if split_cells(rec)[-1:] == [TORN] else
                   rec.rstrip("\n") + ('"' if rec.count('"') % 2 else "") + "," + TORN + "\n" for _, rec in table.torn)
    rundir.atomic_write(path, _encode(fields, rows, header=True) + torn)


def read(path: str | os.PathLike) -> list[dict[str, str]]:
    """The file's rows (torn lines left out: :func:`read_table` names them)."""
    return read_table(path).rows


def find_ok(path: str | os.PathLike, config_hash: str) -> dict[str, str] | None:
    """The last ``ok`` row recorded for ``config_hash``, if any."""
    if not Path(path).exists():
        return None
    hits = [r for r in read(path) if r.get("config_hash") == config_hash and r.get("status") == "ok"]
    return hits[-1] if hits else None


write_json = rundir.write_json  # record.json and the like: atomically (rundir.atomic_write)


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


def run_records(dirs: list[str | os.PathLike], evaluations: bool = False) -> list[tuple[Path, dict[str, Any]]]:
    """Every training run's ``record.json`` in or under ``dirs`` (with ``evaluations``: every
    re-evaluation's, from ``evaluations/`` directories, instead), oldest first; records of skipped
    runs, which copy an earlier row, left out."""
    seen: set[Path] = set()
    out = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise FileNotFoundError(f"run directory {d} does not exist")
        for p in sorted(d.rglob("record.json")):
            if p.resolve() in seen or RunDir.in_evaluation(p.parent) != evaluations:
                continue
            seen.add(p.resolve())
            try:
                rec = json.loads(p.read_text(encoding="utf-8"))
            except ValueError as e:
                raise ValueError(f"{p} is not valid JSON ({e}); move it away or repair it") from None
            if isinstance(rec, dict) and not rec.get("skipped"):
                out.append((p, rec))
    return sorted(out, key=lambda pr: str(pr[1].get("timestamp", "")))


def rebuild(dirs: list[str | os.PathLike], out: str | os.PathLike, evaluations: bool = False) -> tuple[int, int]:
    """Append to ``out`` every run record under ``dirs`` that it lacks (training runs; with
    ``evaluations``, re-evaluations instead: they go to a CSV of their own); returns (found, added)."""
    out = Path(out)
    check_writable(out)
    have = {row_identity(r) for r in (read(out) if out.exists() else [])}
    found = run_records(dirs, evaluations)
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
    try:
        return p.is_dir() or (not p.is_absolute() and (csv_path.parent.parent / p).is_dir())
    except (OSError, ValueError):  # not a path at all (a damaged cell): no such directory
        return False


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
    table = read_table(path)
    rows = table.rows
    latest = latest_by_key(rows)
    problems: list[str] = [describe_torn(line, text) for line, text in table.torn]
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
    rb.add_argument("--evaluations", action="store_true",
                    help="take the re-evaluations' records (RUN/evaluations/*/record.json) instead of the training runs'")
    ck.add_argument("--results", default="results/results.csv", metavar="CSV", help="the CSV to check")
    return ap


def main(argv: list[str] | None = None) -> int:
    """``pvera-bench results rebuild|check``."""
    import sys

    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "rebuild":
            found, added = rebuild(args.runs, args.out, args.evaluations)
            what, note = ("evaluation", "") if args.evaluations else ("run", " (evaluations/ left out: --evaluations)")
            print(f"{found} {what} records found; {added} rows added to {args.out}, {found - added} already there{note}")
            return 0
        if not Path(args.results).is_file():
            raise FileNotFoundError(f"no results CSV at {args.results}; pass --results CSV")
        problems = check(args.results)
    except (FileNotFoundError, ValueError, rundir.DiskFullError) as e:
        print(f"pvera-bench: error: {e}", file=sys.stderr)
        return 2
    n = len(read(args.results))
    for line in problems:
        print(line)
    print(f"{args.results}: {n} rows, {len(problems)} problems")
    return 1 if problems else 0
