"""The results CSV's lines as text: cells in and out, and torn lines told from rows.

A record ends at a newline outside quotes. A torn line (a write cut short, possibly inside a
quoted cell) is either the file's last record when it is not whole, or a record closed by a later
append and marked with :data:`TORN` as its last cell; :func:`parse` sets both aside, never as rows.
No I/O here (:mod:`pvera_bench.results` reads and writes the file).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any, Mapping

EXTRA = "_extra_cells"  # where a hand-edited row's cells beyond the header are kept
TORN = "pvera-bench:torn-line"  # the last cell of a torn line, written when the next append closes it


@dataclass
class Table:
    header: list[str]
    rows: list[dict[str, Any]]
    torn: list[tuple[int, str]]  # (line number, the torn text) of every line set aside


def record_ends(text: str) -> tuple[list[int], bool]:
    """The offsets just after each newline outside quotes (record ends), and whether the text ends
    inside a quoted cell."""
    ends, pos = [], 0
    parts = text.split('"')
    for i, part in enumerate(parts):
        if i % 2 == 0:  # outside quotes
            j = part.find("\n")
            while j >= 0:
                ends.append(pos + j + 1)
                j = part.find("\n", j + 1)
        pos += len(part) + 1
    return ends, len(parts) % 2 == 0


def split_cells(record: str) -> list[str]:
    return next(csv.reader(io.StringIO(record, newline="")), [])


def is_whole(tail: str, header: list[str], in_quote: bool) -> bool:
    """Whether ``tail`` (the text after the last record end) is a whole row that only lacks its
    newline (a file saved by hand), not a torn one."""
    if in_quote or not tail.strip():
        return not in_quote
    cells = split_cells(tail)
    return len(cells) >= len(header) and cells[-1] != TORN


def parse(text: str) -> Table:
    ends, in_quote = record_ends(text)
    starts = [0] + ends
    records = [text[a:b] for a, b in zip(starts, ends)]
    tail = text[starts[-1]:]
    if tail:
        records.append(tail)
    if not records:
        return Table([], [], [])
    header = split_cells(records[0])
    rows, torn, line = [], [], 1 + records[0].count("\n")
    for i, rec in enumerate(records[1:], start=1):
        cells = split_cells(rec) if rec.strip() else []
        last = bool(tail) and i == len(records) - 1
        if (cells and cells[-1] == TORN) or (last and not is_whole(tail, header, in_quote)):
            torn.append((line, rec))
        elif cells:
            row: dict[str, Any] = dict(zip(header, cells))
            if len(cells) > len(header):
                row[EXTRA] = cells[len(header):]
            for k in header[len(cells):]:
                row[k] = None
            rows.append(row)
        line += rec.count("\n")
    return Table(header, rows, torn)


def describe_torn(line: int, text: str) -> str:
    snippet = " ".join(text.replace(TORN, "").split())[:60]
    return f"torn line {line} (a write cut short, set aside; not a row): {snippet!r}"


def cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if v != v else repr(round(v, 6))  # NaN -> empty
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def encode(fields: list[str], rows: list[Mapping[str, Any]], header: bool = False) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, restval="", extrasaction="ignore", lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
