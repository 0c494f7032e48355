"""Check a shipped reference (pvera_bench/report/references/<file>.yaml) cell by cell against the
source file it cites: every row's per-task values, its printed mean and params, and that the
printed mean equals the mean of the row (after rounding).

    git --git-dir=/path/to/Parameter-Efficient-Transfer-Learning-Benchmark/.git show c188fad:README.md > /tmp/readme.md
    python scripts/check_references.py --reference vpetl --source /tmp/readme.md

The source's table is the first Markdown table after the line that contains the reference's
``source.table``; its columns are found by their headers (``COLUMNS``: V-PETL-Bench's names for
the 19 VTAB-1k tasks, then Mean and Params.). Row names are matched case-insensitively. Exit
status 1 on any difference.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pvera_bench.report import references
from pvera_bench.tasks import vtab_tasks

COLUMNS = {  # the source table's header -> our task name
    "CIFAR-100": "cifar100", "Caltech101": "caltech101", "DTD": "dtd", "Flowers102": "oxford_flowers102",
    "Pets": "oxford_iiit_pet", "SVHN": "svhn", "Sun397": "sun397", "Patch Camelyon": "patch_camelyon",
    "EuroSAT": "eurosat", "Resisc45": "resisc45", "Retinopathy": "diabetic_retinopathy", "Clevr/count": "clevr_count",
    "Clevr/distance": "clevr_dist", "DMLab": "dmlab", "KITTI/distance": "kitti", "dSprites/loc": "dsprites_loc",
    "dSprites/ori": "dsprites_ori", "SmallNORB/azi": "smallnorb_azi", "SmallNORB/ele": "smallnorb_ele",
    "Mean": "mean", "Params.": "params",
}


def markdown_table(text: str, title: str) -> dict[str, dict[str, str]]:
    """``{row name (lower case): {our column name: cell}}`` of the first table after ``title``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if title in line)
    rows: dict[str, dict[str, str]] = {}
    header: list[str] | None = None
    for line in lines[start + 1:]:
        if line.lstrip().startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = [COLUMNS.get(c, c) for c in cells[1:]]
            elif not set(cells[0]) <= set("-: "):
                rows[cells[0].lower()] = dict(zip(header, cells[1:]))
        elif header is not None:
            break
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default="vpetl")
    ap.add_argument("--source", required=True, help="the cited file, at the cited commit")
    a = ap.parse_args(argv)
    ref = references.get(a.reference)
    table = markdown_table(Path(a.source).read_text(encoding="utf-8"), ref.source["table"])
    tasks = vtab_tasks()
    bad = 0
    for r in ref.rows:
        cells = table.get(r["method"].lower())
        if cells is None:
            print(f"MISSING {r['method']}: no such row in the source table")
            bad += 1
            continue
        printed = [float(cells[t]) for t in tasks]
        ours = [float(r["values"][t]) for t in tasks]
        diffs = [(t, o, p) for t, o, p in zip(tasks, ours, printed) if o != p]
        mean_ok = float(cells["mean"]) == float(r["mean"]) and round(float(np.mean(printed)), 2) == float(r["mean"])
        params_ok = cells["params"].replace(" ", "") == str(r["params"]).replace(" ", "")
        ok = not diffs and mean_ok and params_ok
        bad += not ok
        print(f"{'OK' if ok else 'DIFF'} {r['method']}: 19 cells{'' if not diffs else f' differ: {diffs}'}, "
              f"mean {r['mean']} (printed {cells['mean']}, recomputed {np.mean(printed):.3f}), "
              f"params {r['params']} (printed {cells['params']})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
