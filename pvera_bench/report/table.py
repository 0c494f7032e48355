"""The main table: one row per setting, a column per task with results, the averages.

Per task: the mean over the setting's seeds and the sample standard deviation (ddof=1; none with
one seed). VTAB-1k tasks come in benchmark order, then any other task (e.g. ``demo``), which no
average includes. Only tasks with results are columns (``--all-tasks``: all 19 VTAB columns).
Aggregates are means of the per-task means: ``natural`` / ``specialized`` / ``structured`` over
the group's tasks with results, ``mean`` over the VTAB tasks with results (SSF, V-PETL-Bench,
PVeRA), ``mean_of_groups`` over the available group means (NOAH, FacT); md / latex cells say what
an incomplete aggregate covers (``71.2 (17/19)``).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from .. import tasks as _tasks
from ..metric_registry import Metric
from .load import labels, task_columns

ID_COLUMNS = ("adapter", "backbone", "protocol", "recipe", "label", "setting", "adapter_options", "code_versions")
SHOWN = ("backbone", "protocol", "recipe")  # md / latex columns, when the runs hold several values


def csv_columns(vtab: list[str], extra: list[str]) -> list[str]:
    """The column names of ``--format csv``, in order."""
    cols = list(ID_COLUMNS)
    for t in vtab + extra:
        cols += [t, f"{t}_std", f"{t}_n_seeds"]
    for g in _tasks.GROUPS:
        cols += [g, f"{g}_n_tasks"]
    cols += ["mean", "mean_n_tasks", "mean_of_groups", "mean_of_groups_n_groups", "params_adapter"]
    return cols


def shown_columns(runs: pd.DataFrame) -> list[str]:
    return [k for k in SHOWN if runs[k].nunique() > 1]


def aggregates(task_mean: dict[str, float], vtab: list[str]) -> dict[str, float]:
    """Group means, ``mean`` and ``mean_of_groups`` (with their counts) of per-task means."""
    row: dict[str, float] = {}
    group_means = []
    for g in _tasks.GROUPS:
        present = [task_mean[t] for t in _tasks.tasks_in_group(g) if t in task_mean]
        row[g] = float(np.mean(present)) if present else math.nan
        row[f"{g}_n_tasks"] = len(present)
        if present:
            group_means.append(row[g])
    present = [task_mean[t] for t in vtab if t in task_mean]
    row["mean"] = float(np.mean(present)) if present else math.nan
    row["mean_n_tasks"] = len(present)
    row["mean_of_groups"] = float(np.mean(group_means)) if group_means else math.nan
    row["mean_of_groups_n_groups"] = len(group_means)
    return row


def build_table(runs: pd.DataFrame, settings: dict[str, dict], all_tasks: bool = False) -> pd.DataFrame:
    """The numeric table (the ``--format csv`` frame): one row per setting."""
    vtab, extra = task_columns(runs, all_tasks)
    all_vtab = task_columns(runs, True)[0]
    names = labels(settings, tuple(shown_columns(runs)))
    rows = []
    for sid, sub in runs.groupby("setting", sort=False):
        s = settings[sid]
        row: dict[str, object] = dict(adapter=s["adapter"], backbone=s["backbone"], protocol=s["protocol"],
                                      recipe=s["recipe"], label=names[sid], setting=sid,
                                      adapter_options=json.dumps(s["options"], sort_keys=True),
                                      code_versions=";".join(sorted(set(sub["code"]) - {""})))
        task_mean: dict[str, float] = {}
        for t in vtab + extra:
            vals = sub.loc[sub["task"] == t, "value"].to_numpy(dtype=float)
            n = len(vals)
            row[t] = float(vals.mean()) if n else math.nan
            row[f"{t}_std"] = float(vals.std(ddof=1)) if n > 1 else math.nan
            row[f"{t}_n_seeds"] = n
        for t, vals in sub.groupby("task")["value"]:
            if t in all_vtab:
                task_mean[t] = float(vals.mean())
        row.update(aggregates(task_mean, all_vtab))
        params = sub["params"].dropna()
        row["params_adapter"] = float(params.median()) if len(params) else math.nan
        row["_params_min"] = float(params.min()) if len(params) else math.nan
        row["_params_max"] = float(params.max()) if len(params) else math.nan
        row["_mixed_code"] = [(t, sorted(set(c) - {""}) + (["unknown"] if "" in set(c) else []))
                              for t, c in sub.groupby("task")["code"] if c.nunique() > 1]
        rows.append(row)
    cols = csv_columns(vtab, extra)
    table = pd.DataFrame(rows, columns=cols + ["_params_min", "_params_max", "_mixed_code"])
    table = table.sort_values(["adapter", "backbone", "protocol", "recipe", "label"], kind="stable").reset_index(drop=True)
    for c in cols:
        if c.endswith("_n_seeds") or c.endswith("_n_tasks") or c == "mean_of_groups_n_groups":
            table[c] = table[c].astype(int)
    return table


def public(table: pd.DataFrame) -> pd.DataFrame:
    """The table without its private (underscore) columns: the ``--format csv`` frame."""
    return table[[c for c in table.columns if not c.startswith("_")]]


def fmt(v, d: int) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"


def fmt_params(row) -> str:
    lo, hi, med = row.get("_params_min", math.nan), row.get("_params_max", math.nan), row["params_adapter"]
    if med is None or (isinstance(med, float) and math.isnan(med)):
        return ""
    if not math.isnan(lo) and lo != hi:
        return f"{int(round(lo)):,}–{int(round(hi)):,}"
    return f"{int(round(med)):,}"


def aggregate_cells(r, n_vtab: int, decimals: int) -> list[str]:
    group_total = {g: len(_tasks.tasks_in_group(g)) for g in _tasks.GROUPS}
    cells = []
    for g in _tasks.GROUPS:
        cell, n = fmt(r[g], decimals), r[f"{g}_n_tasks"]
        if cell and n < group_total[g]:
            cell += f" ({n}/{group_total[g]})"
        cells.append(cell)
    n = r["mean_n_tasks"]
    cell = fmt(r["mean"], decimals)
    cells.append(cell + (f" ({n}/{n_vtab})" if cell and n < n_vtab else ""))
    cell, ng = fmt(r["mean_of_groups"], decimals), r["mean_of_groups_n_groups"]
    if cell and n < n_vtab:
        n_groups = len(_tasks.GROUPS)
        cell += f" ({n}/{n_vtab}" + (f"; {ng}/{n_groups} groups)" if ng < n_groups else ")")
    cells.append(cell)
    return cells


def header(runs: pd.DataFrame, tasks: list[str], averages: bool = True) -> tuple[list[str], list[str]]:
    """(label columns, the whole header) of the md / latex table; ``averages``: the group means,
    ``mean`` and ``mean_of_groups`` (left out when no VTAB task has results)."""
    label_cols = ["adapter"] + shown_columns(runs)
    avg = list(_tasks.GROUPS) + ["mean", "mean_of_groups"] if averages else []
    return label_cols, label_cols + tasks + avg + ["params_adapter"]


def row_cells(r, label_cols: list[str], tasks: list[str], n_vtab: int, decimals: int, pm: str = "±",
              averages: bool = True) -> list[str]:
    cells = [str(r["label"] if k == "adapter" else r[k]) for k in label_cols]
    for t in tasks:
        m, s, n = r[t], r.get(f"{t}_std", math.nan), r.get(f"{t}_n_seeds", 1)
        cell = fmt(m, decimals)
        if n > 1 and not math.isnan(s):
            cell += f" {pm} {fmt(s, decimals)}"
        cells.append(cell)
    return cells + (aggregate_cells(r, n_vtab, decimals) if averages else []) + [fmt_params(r)]


def format_cells(table: pd.DataFrame, runs: pd.DataFrame, decimals: int,
                 all_tasks: bool = False) -> tuple[list[str], list[list[str]], int]:
    """Header, string cells and the number of label columns of the md / latex table."""
    vtab, extra = task_columns(runs, all_tasks)
    n_vtab = len(task_columns(runs, True)[0])
    label_cols, head = header(runs, vtab + extra, bool(vtab))
    body = [row_cells(r, label_cols, vtab + extra, n_vtab, decimals, averages=bool(vtab)) for _, r in table.iterrows()]
    return head, body, len(label_cols)


def legend(metric: Metric, runs: pd.DataFrame, table: pd.DataFrame, all_tasks: bool = False) -> list[str]:
    vtab, extra = task_columns(runs, all_tasks)
    n_vtab = len(task_columns(runs, True)[0])
    lines = [
        f"Metric: {metric.column} ({metric.description}; {metric.direction}). Task cells: mean ± sample std "
        "(ddof=1) over seeds, the plain mean with one seed; empty = no results.",
    ]
    if vtab:
        lines.append("natural / specialized / structured: mean over the group's tasks with results. "
                     f"mean: mean over the {n_vtab} VTAB-1k tasks (SSF, V-PETL-Bench, PVeRA convention). "
                     "mean_of_groups: mean of the three group means (NOAH, FacT convention). "
                     f"(n/{n_vtab}): the tasks covered when incomplete.")
    else:
        lines.append("No VTAB-1k results: no group means and no mean over VTAB tasks (--all-tasks shows the 19 "
                     "empty VTAB columns).")
    if vtab and not all_tasks and len(vtab) < n_vtab:
        lines.append(f"Columns: the {len(vtab)} of {n_vtab} VTAB-1k tasks with results (--all-tasks shows all).")
    if extra:
        lines.append(f"Not VTAB-1k, excluded from the averages: {', '.join(extra)}.")
    if metric.optimistic:
        lines.append(f"{metric.column} is chosen on the test split (optimistic): compare it only with numbers "
                     "chosen the same way.")
    shared = table[table["label"] != table["adapter"]]
    if len(shared):
        lines.append("Rows sharing an adapter name are different settings, labelled by what differs: "
                     + ", ".join(shared["label"]) + "; each averages only its own seeds.")
    mixed = [f"{r['label']} / {t} ({', '.join(codes)})" for _, r in table.iterrows() for t, codes in r["_mixed_code"]]
    if mixed:
        lines.append("Cells that mix code versions (`versions` differs between their seeds): " + "; ".join(mixed)
                     + ". Their seeds ran different code; see `code_versions` in --format csv.")
    lines.append("params_adapter: trainable adapter parameters (median over the row's runs; min–max when they differ).")
    return lines


def to_markdown(head: list[str], body: list[list[str]], notes: list[str], n_label: int = 1) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in head) + " |"]
    lines.append("|" + "|".join(":---" if i < n_label else "---:" for i in range(len(head))) + "|")
    for cells in body:
        lines.append("| " + " | ".join(esc(c) for c in cells) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(s: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in s)


def to_latex(head: list[str], body: list[list[str]], notes: list[str], n_label: int = 1) -> str:
    spec = "l" * n_label + "r" * (len(head) - n_label)

    def cell(s: str) -> str:
        return (latex_escape(s).replace("±", r"$\pm$").replace("–", "--").replace("Δ", r"$\Delta$")
                .replace("∈", r"$\in$").replace("−", "-"))

    out = [f"% {n}" for n in notes]
    out += [f"\\begin{{tabular}}{{{spec}}}", r"\toprule"]
    out.append(" & ".join(cell(h) for h in head) + r" \\")
    out.append(r"\midrule")
    for cells in body:
        out.append(" & ".join(cell(c) for c in cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def render(fmt_name: str, head: list[str], body: list[list[str]], notes: list[str], n_label: int) -> str:
    return (to_markdown if fmt_name == "md" else to_latex)(head, body, notes, n_label)
