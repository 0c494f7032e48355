"""``pvera-bench report --plot-ood-matrix FILE``: the OOD matrix of each setting.

One panel per setting (and score: max softmax probability, and predictive entropy where the runs
sampled): rows are the training (in-distribution) task, columns the OOD task, cells the AUROC of
telling the training task's test images from the OOD task's, averaged over seeds. Cells come from
the rows' ``ood_aurocs`` / ``ood_aurocs_entropy`` JSON (``pvera-bench evaluate RUN... ood_task=vtab``
fills a whole row of the matrix per run), or ``ood_task`` / ``ood_auroc`` for rows with one OOD task.
The table view's ``--metric auroc`` gives each setting's mean AUROC per training task.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from .load import ReportError, load_runs

SCORES = (("ood_aurocs", "ood_auroc", "max softmax probability"),
          ("ood_aurocs_entropy", "ood_auroc_entropy", "predictive entropy"))


def _pairs(raw: pd.Series, json_col: str, single_col: str) -> dict[str, float]:
    text = raw.get(json_col)
    if isinstance(text, str) and text.strip():
        try:
            return {str(k): float(v) for k, v in json.loads(text).items()}
        except (ValueError, AttributeError):
            raise ReportError(f"column {json_col} is not a JSON mapping of task to AUROC: {text[:80]!r}") from None
    task, value = raw.get("ood_task"), pd.to_numeric(raw.get(single_col), errors="coerce")
    if isinstance(task, str) and task and "," not in task and not math.isnan(value):
        return {task: float(value)}
    return {}


def matrices(csv_path: Path, filters: dict, names_of) -> list[tuple[str, pd.DataFrame]]:
    """``[(title, matrix)]``: per setting and score, training task x OOD task, mean over seeds."""
    runs, settings = load_runs(csv_path, "ood_auroc", filters)
    if runs.empty:
        raise ReportError("--plot-ood-matrix: no ok run with an OOD AUROC (run or evaluate with ood_task=...)")
    raw = pd.read_csv(csv_path, dtype=str, skip_blank_lines=False)
    names = names_of(settings)
    out = []
    for sid in dict.fromkeys(runs["setting"]):
        mine = runs[runs["setting"] == sid]
        for json_col, single_col, what in SCORES:
            cells: dict[tuple[str, str], list[float]] = {}
            for _, r in mine.iterrows():
                for other, v in _pairs(raw.iloc[int(r["line"]) - 2], json_col, single_col).items():
                    cells.setdefault((r["task"], other), []).append(v)
            if not cells:
                continue
            rows = sorted({t for t, _ in cells})
            cols = sorted({o for _, o in cells} | set(rows))  # the training tasks too: a blank diagonal
            m = pd.DataFrame([[np.mean(cells[(t, o)]) if (t, o) in cells else math.nan for o in cols] for t in rows],
                             index=rows, columns=cols)
            out.append((f"{names.get(sid, sid)}: AUROC by {what}", m))
    return out


def plot(panels: list[tuple[str, pd.DataFrame]], path) -> None:
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    if not panels:
        raise ReportError("--plot-ood-matrix: nothing to draw")
    n = len(panels)
    ncol = min(n, 2)
    nrow = math.ceil(n / ncol)
    w = max(m.shape[1] for _, m in panels)
    h = max(m.shape[0] for _, m in panels)
    fig = Figure(figsize=(ncol * (3.4 + 0.7 * w), nrow * (2.2 + 0.5 * h)), constrained_layout=True)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    cmap = colormaps["viridis"]
    for ax, (title, m) in zip(axes.flat, panels):
        data = m.to_numpy(dtype=float)
        im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
        for (i, j), v in np.ndenumerate(data):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black")
            elif m.index[i] == m.columns[j]:
                ax.text(j, i, "in-domain", ha="center", va="center", fontsize=7, color="grey")
        ax.set_xticks(range(data.shape[1]), [str(c) for c in m.columns], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(data.shape[0]), [str(i) for i in m.index], fontsize=8)
        ax.set_xlabel("OOD task (test split)", fontsize=8)
        ax.set_ylabel("training task", fontsize=8)
        ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=8)
        fig.colorbar(im, ax=ax, shrink=0.8, label="AUROC (0.5 = chance)")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.savefig(path, dpi=150)
