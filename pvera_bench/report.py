"""``pvera-bench report``: the results table (Markdown, CSV or LaTeX) and plots from the results CSV.

Input: the results CSV (default ``results/results.csv``), one line per run. Only these columns
are read: ``task, adapter, backbone, protocol, seed, params_adapter, status`` and the chosen
metric's column (``--metric`` acc -> ``test_acc``, nll -> ``test_nll``, ece -> ``test_ece``,
brier -> ``test_brier``, auroc -> ``ood_auroc``); ``--plot-reliability`` also needs ``run_dir``.
Other columns, and any column order, are fine. A missing column, an unreadable line or a
non-numeric metric / ``params_adapter`` value is one error message and exit code 2.

Which runs count:

* runs whose ``status`` is not ``ok`` are excluded and counted (``excluded N failed runs`` on
  stderr); an ``ok`` run with an empty metric cell is skipped with a note;
* the filters ``--task --adapter --backbone --protocol --seed`` (repeatable or comma-separated)
  select runs for the table and the plots alike;
* the same (adapter, backbone, protocol, task, seed) twice: the last line wins (with a note).

The table has one row per (adapter, backbone, protocol). Per task: the mean over seeds and the
**sample standard deviation (ddof=1)** over seeds (no std with one seed). Tasks are the 19 VTAB-1k
tasks in benchmark order (always all 19 columns, a task without results is empty, never zero),
then any other task in the CSV (e.g. ``demo``) in alphabetical order; those are excluded from all
averages. Aggregates are means of the per-task means (no std):

* ``natural``, ``specialized``, ``structured``: mean over the group's tasks that have results;
* ``mean``: mean over the VTAB tasks with results ("mean over 19 tasks": SSF, V-PETL-Bench, PVeRA);
* ``mean_of_groups``: mean of the available group means ("mean of 3 group means": NOAH, FacT);
* ``params_adapter``: the median over the row's runs of the adapter's trainable parameters
  (md / latex cells show the range ``min–max`` when the runs differ).

``--format md`` (default) and ``--format latex``: cells ``72.3 ± 0.4`` (several seeds) or ``72.3``
(one seed), 1 decimal for accuracy and 3 for the other metrics (``--decimals``); an incomplete
aggregate says what it covers, e.g. ``71.2 (17/19)``, ``70.0 (5/7)``, ``69.8 (11/19; 2/3 groups)``.
``backbone`` and ``protocol`` columns appear only when the runs hold several. A legend follows the
table (Markdown) or precedes it as ``%`` comments (LaTeX, a booktabs ``tabular``).

``--format csv`` (for scripts), columns in this order, numbers unformatted, empty = no value::

    adapter, backbone, protocol,
    <task>, <task>_std, <task>_n_seeds          for each VTAB task, then each other task
    natural, natural_n_tasks, specialized, specialized_n_tasks, structured, structured_n_tasks,
    mean, mean_n_tasks, mean_of_groups, mean_of_groups_n_groups, params_adapter

``<task>`` is the mean over seeds, ``<task>_std`` the sample std (empty with one seed),
``<task>_n_seeds`` the number of seeds (0 = no results); ``mean_of_groups`` covers the same tasks as
``mean`` (``mean_n_tasks``).

``--plot FILE.png``: the metric's mean over the VTAB tasks (over the tasks present, when some are
missing, as the axis label says; over the non-VTAB tasks when there are no VTAB results) against
``params_adapter`` on a log axis, one labelled point per row; 0 parameters (linear probe) are drawn
at a floor (a tenth of the smallest positive count) with an open marker and ``0 params`` in the label.

``--plot-reliability FILE.png``: reliability diagrams (15 bins, ``--bins``) of the selected runs,
one panel per run (at most ``--max-panels``, default 8), from ``<run_dir>/predictions.npz``
(``probs (N, C)``, ``labels (N,)``); a relative ``run_dir`` is looked up from the current directory,
then next to the CSV, then in the CSV folder's parent.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from . import tasks as _tasks

METRIC_COLUMNS = {
    "acc": "test_acc",
    "nll": "test_nll",
    "ece": "test_ece",
    "brier": "test_brier",
    "auroc": "ood_auroc",
}
METRIC_DESCRIPTIONS = {
    "acc": "top-1 test accuracy, percent",
    "nll": "test negative log-likelihood, nats",
    "ece": "test expected calibration error (15 bins), fraction",
    "brier": "test Brier score",
    "auroc": "OOD detection AUROC",
}
DEFAULT_DECIMALS = {"acc": 1, "nll": 3, "ece": 3, "brier": 3, "auroc": 3}
KEYS = ("adapter", "backbone", "protocol")
BASE_COLUMNS = ("task", "adapter", "backbone", "protocol", "seed", "params_adapter", "status")
MAX_PANELS = 8


class ReportError(Exception):
    """A problem with the input that ends the command with one message and exit code 2."""


def _warn(msg: str) -> None:
    print(msg, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# loading


def _norm_seed(value: str) -> str:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return value
    return str(int(f)) if math.isfinite(f) and f.is_integer() else value


def _parse_filters(values: list[str] | None) -> set[str] | None:
    if not values:
        return None
    out = {v.strip() for item in values for v in item.split(",") if v.strip()}
    return out or None


def load_runs(
    path: str | Path,
    metric_col: str = "test_acc",
    filters: dict[str, set[str] | None] | None = None,
    need_run_dir: bool = False,
) -> pd.DataFrame:
    """The successful runs of the results CSV, filtered and de-duplicated.

    Returns a frame with ``adapter, backbone, protocol, task, seed`` (strings), ``value`` (the
    metric), ``params`` (``params_adapter``), ``line`` (the CSV line) and ``run_dir`` when asked.
    Raises :class:`ReportError` for an unusable file.
    """
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"results file not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise ReportError(f"{path}: the file is empty (no header line)") from None
    except pd.errors.ParserError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ReportError(f"{path}: malformed CSV: {first}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ReportError(f"{path}: unreadable CSV: {e}") from None

    df.columns = [str(c).strip() for c in df.columns]
    required = list(BASE_COLUMNS) + [metric_col] + (["run_dir"] if need_run_dir else [])
    missing = [c for c in dict.fromkeys(required) if c not in df.columns]
    if missing:
        raise ReportError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(the report needs {', '.join(dict.fromkeys(required))})"
        )
    has_hash = "config_hash" in df.columns
    df = df[list(dict.fromkeys(required + (["config_hash"] if has_hash else [])))].copy()
    df["line"] = df.index + 2  # line 1 is the header; blank lines are kept as empty rows
    df = df.dropna(how="all", subset=list(dict.fromkeys(required)))
    for col in ("task", "adapter", "backbone", "protocol", "seed", "status"):
        df[col] = df[col].fillna("").str.strip()
    df["seed"] = df["seed"].map(_norm_seed)

    for col, dest in ((metric_col, "value"), ("params_adapter", "params")):
        raw = df[col].str.strip()
        num = pd.to_numeric(raw, errors="coerce")
        bad = raw.notna() & (raw != "") & num.isna()
        if bad.any():
            i = bad.idxmax()
            raise ReportError(
                f"{path} line {df.at[i, 'line']}: column {col} is not a number: {df.at[i, col]!r}"
            )
        df[dest] = num.astype(float)

    for col in ("task", "adapter"):
        empty = df[col] == ""
        if empty.any():
            raise ReportError(f"{path} line {df.loc[empty, 'line'].iloc[0]}: empty {col}")

    for col, allowed in (filters or {}).items():
        if allowed:
            keep = df[col].isin(allowed)
            if not keep.any():
                have = sorted(set(df[col]) - {""})
                raise ReportError(f"--{col} {','.join(sorted(allowed))} matches no run in {path}; "
                                  f"it has {col} {', '.join(have) if have else '(none)'}")
            df = df[keep]

    ok = df["status"].str.lower() == "ok"
    n_failed = int((~ok).sum())
    if n_failed:
        _warn(f"excluded {n_failed} failed run{'s' if n_failed != 1 else ''} (status != ok)")
    df = df[ok]

    no_value = df["value"].isna()
    if no_value.any():
        n = int(no_value.sum())
        _warn(f"skipped {n} ok run{'s' if n != 1 else ''} without a {metric_col} value")
        df = df[~no_value]

    key = ["adapter", "backbone", "protocol", "task", "seed"]
    dups = df.duplicated(subset=key, keep="last")
    if dups.any():
        n = int(dups.sum())
        _warn(f"{n} run{'s' if n != 1 else ''} repeated (same {'/'.join(key)}): kept the last line of each")
        if has_hash:
            mixed = int((df.groupby(key)["config_hash"].nunique() > 1).sum())
            if mixed:
                _warn(f"{mixed} of those cells hold runs of different settings (config_hash differs: adapter "
                      f"options or trainer overrides); only the last counts. Select one setting by filtering "
                      f"the CSV first")
        df = df[~dups]

    cols = key + ["value", "params", "line"] + (["run_dir"] if need_run_dir else [])
    out = df[cols].reset_index(drop=True)
    if need_run_dir:
        out["run_dir"] = out["run_dir"].fillna("").str.strip()
    return out


# ---------------------------------------------------------------------------------------------
# the table


def task_columns(runs: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(the VTAB tasks in benchmark order, the other tasks present in ``runs`` sorted)."""
    try:
        vtab = list(_tasks.vtab_tasks())
    except FileNotFoundError as e:  # no configs/: a broken install
        raise ReportError(str(e)) from None
    extra = sorted(set(runs["task"]) - set(vtab))
    return vtab, extra


def csv_columns(vtab: list[str], extra: list[str]) -> list[str]:
    """The column names of ``--format csv``, in order."""
    cols = list(KEYS)
    for t in vtab + extra:
        cols += [t, f"{t}_std", f"{t}_n_seeds"]
    for g in _tasks.GROUPS:
        cols += [g, f"{g}_n_tasks"]
    cols += ["mean", "mean_n_tasks", "mean_of_groups", "mean_of_groups_n_groups", "params_adapter"]
    return cols


def build_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The numeric table (the ``--format csv`` frame): one row per (adapter, backbone, protocol)."""
    vtab, extra = task_columns(runs)
    group_tasks = {g: _tasks.tasks_in_group(g) for g in _tasks.GROUPS}
    rows = []
    for key, sub in runs.groupby(list(KEYS), sort=True):
        row: dict[str, object] = dict(zip(KEYS, key))
        task_mean: dict[str, float] = {}
        for t in vtab + extra:
            vals = sub.loc[sub["task"] == t, "value"].to_numpy(dtype=float)
            n = len(vals)
            m = float(vals.mean()) if n else math.nan
            row[t] = m
            row[f"{t}_std"] = float(vals.std(ddof=1)) if n > 1 else math.nan
            row[f"{t}_n_seeds"] = n
            if n:
                task_mean[t] = m
        group_means = []
        for g in _tasks.GROUPS:
            present = [task_mean[t] for t in group_tasks[g] if t in task_mean]
            row[g] = float(np.mean(present)) if present else math.nan
            row[f"{g}_n_tasks"] = len(present)
            if present:
                group_means.append(row[g])
        present = [task_mean[t] for t in vtab if t in task_mean]
        row["mean"] = float(np.mean(present)) if present else math.nan
        row["mean_n_tasks"] = len(present)
        row["mean_of_groups"] = float(np.mean(group_means)) if group_means else math.nan
        row["mean_of_groups_n_groups"] = len(group_means)
        params = sub["params"].dropna()
        row["params_adapter"] = float(params.median()) if len(params) else math.nan
        row["_params_min"] = float(params.min()) if len(params) else math.nan
        row["_params_max"] = float(params.max()) if len(params) else math.nan
        rows.append(row)
    cols = csv_columns(vtab, extra)
    table = pd.DataFrame(rows, columns=cols + ["_params_min", "_params_max"])
    for c in cols:
        if c.endswith("_n_seeds") or c.endswith("_n_tasks") or c == "mean_of_groups_n_groups":
            table[c] = table[c].astype(int)
    return table


def _fmt(v: float, d: int) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"


def _fmt_params(row) -> str:
    lo, hi, med = row["_params_min"], row["_params_max"], row["params_adapter"]
    if math.isnan(med):
        return ""
    if lo != hi:
        return f"{int(round(lo)):,}–{int(round(hi)):,}"
    return f"{int(round(med)):,}"


def format_cells(table: pd.DataFrame, runs: pd.DataFrame, decimals: int, pm: str = "±") -> tuple[list[str], list[list[str]]]:
    """Header and string cells for the md / latex table."""
    vtab, extra = task_columns(runs)
    n_vtab = len(vtab)
    group_total = {g: len(_tasks.tasks_in_group(g)) for g in _tasks.GROUPS}
    labels = ["adapter"] + [k for k in KEYS[1:] if runs[k].nunique() > 1]
    header = labels + vtab + extra + list(_tasks.GROUPS) + ["mean", "mean_of_groups", "params_adapter"]
    body = []
    for _, r in table.iterrows():
        cells = [str(r[k]) for k in labels]
        for t in vtab + extra:
            m, s, n = r[t], r[f"{t}_std"], r[f"{t}_n_seeds"]
            cell = _fmt(m, decimals)
            if n > 1 and not math.isnan(s):
                cell += f" {pm} {_fmt(s, decimals)}"
            cells.append(cell)
        for g in _tasks.GROUPS:
            cell, n = _fmt(r[g], decimals), r[f"{g}_n_tasks"]
            if cell and n < group_total[g]:
                cell += f" ({n}/{group_total[g]})"
            cells.append(cell)
        n = r["mean_n_tasks"]
        cell = _fmt(r["mean"], decimals)
        cells.append(cell + (f" ({n}/{n_vtab})" if cell and n < n_vtab else ""))
        cell, ng = _fmt(r["mean_of_groups"], decimals), r["mean_of_groups_n_groups"]
        if cell and n < n_vtab:
            n_groups = len(_tasks.GROUPS)
            cell += f" ({n}/{n_vtab}" + (f"; {ng}/{n_groups} groups)" if ng < n_groups else ")")
        cells.append(cell)
        cells.append(_fmt_params(r))
        body.append(cells)
    return header, body


def legend(metric: str, runs: pd.DataFrame) -> list[str]:
    vtab, extra = task_columns(runs)
    lines = [
        f"Metric: {METRIC_COLUMNS[metric]} ({METRIC_DESCRIPTIONS[metric]}). Task cells: mean ± sample std "
        "(ddof=1) over seeds, the plain mean with one seed; empty = no results.",
        "natural / specialized / structured: mean over the group's tasks with results. "
        f"mean: mean over the {len(vtab)} VTAB-1k tasks (SSF, V-PETL-Bench, PVeRA convention). "
        "mean_of_groups: mean of the three group means (NOAH, FacT convention). "
        f"(n/{len(vtab)}): the tasks covered when incomplete.",
    ]
    if extra:
        lines.append(f"Not VTAB-1k, excluded from the averages: {', '.join(extra)}.")
    lines.append("params_adapter: trainable adapter parameters (median over the row's runs; min–max when they differ).")
    return lines


def to_markdown(header: list[str], body: list[list[str]], notes: list[str]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    n_label = sum(1 for h in header if h in KEYS)
    lines = ["| " + " | ".join(esc(h) for h in header) + " |"]
    lines.append("|" + "|".join(":---" if i < n_label else "---:" for i in range(len(header))) + "|")
    for cells in body:
        lines.append("| " + " | ".join(esc(c) for c in cells) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(s: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in s)


def to_latex(header: list[str], body: list[list[str]], notes: list[str]) -> str:
    n_label = sum(1 for h in header if h in KEYS)
    spec = "l" * n_label + "r" * (len(header) - n_label)

    def cell(s: str) -> str:
        return _latex_escape(s).replace("±", r"$\pm$").replace("–", "--")

    out = [f"% {n}" for n in notes]
    out += [f"\\begin{{tabular}}{{{spec}}}", r"\toprule"]
    out.append(" & ".join(cell(h) for h in header) + r" \\")
    out.append(r"\midrule")
    for cells in body:
        out.append(" & ".join(cell(c) for c in cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# plots


def _row_label(r, vary: list[str]) -> str:
    extra = [str(r[k]) for k in vary]
    return str(r["adapter"]) + (f" ({', '.join(extra)})" if extra else "")


def plot_params(table: pd.DataFrame, runs: pd.DataFrame, metric: str, path: str | Path) -> None:
    """The metric's mean against ``params_adapter`` (log x), one labelled point per table row."""
    from matplotlib.figure import Figure

    vtab, extra = task_columns(runs)
    n_vtab = len(vtab)
    vary = [k for k in KEYS[1:] if runs[k].nunique() > 1]
    col = METRIC_COLUMNS[metric]
    use_vtab = bool((table["mean_n_tasks"] > 0).any())
    points = []  # (label, params, y)
    for _, r in table.iterrows():
        label = _row_label(r, vary)
        if use_vtab:
            if r["mean_n_tasks"] == 0:
                _warn(f"--plot: {label} has no VTAB results, left out")
                continue
            y = r["mean"]
            if r["mean_n_tasks"] < n_vtab:
                label += f" [{r['mean_n_tasks']}/{n_vtab}]"
        else:
            vals = [r[t] for t in extra if not math.isnan(r[t])]
            y = float(np.mean(vals))
        if math.isnan(r["params_adapter"]):
            _warn(f"--plot: {label} has no params_adapter value, left out")
            continue
        points.append((label, float(r["params_adapter"]), float(y)))
    if not points:
        raise ReportError("--plot: no results to plot")

    if use_vtab:
        complete = all(n == n_vtab for n in table.loc[table["mean_n_tasks"] > 0, "mean_n_tasks"])
        ylabel = (f"{col}, mean over the {n_vtab} VTAB-1k tasks" if complete
                  else f"{col}, mean over the VTAB-1k tasks present ([n/{n_vtab}] per point)")
    else:
        ylabel = f"{col}, mean over the tasks present ({', '.join(extra)}; not VTAB-1k)"

    positive = [p for _, p, _ in points if p > 0]
    floor = min(positive) / 10 if positive else 1.0
    fig = Figure(figsize=(7, 5), constrained_layout=True)
    ax = fig.add_subplot()
    for label, p, y in points:
        if p > 0:
            ax.scatter([p], [y], color="tab:blue", zorder=3)
        else:
            ax.scatter([floor], [y], facecolors="none", edgecolors="tab:blue", zorder=3)
            label += " (0 params)"
        ax.annotate(label, (p if p > 0 else floor, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.margins(x=0.25, y=0.1)  # room for the labels
    xlabel = "params_adapter (trainable adapter parameters, log scale)"
    if any(p <= 0 for _, p, _ in points):
        xlabel += f"; 0 drawn at {floor:g}"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    fig.savefig(path, dpi=150)


def _resolve_run_dir(run_dir: str, csv_path: Path) -> Path | None:
    """The run's directory as recorded, or, for results copied elsewhere (from a cluster, say),
    the longest tail of it (``multirun/<date>/<time>/<job>``, ...) found under the current
    directory, the CSV's directory or its parent."""
    p = Path(run_dir)
    if (p / "predictions.npz").is_file():
        return p
    parts = p.parts[1:] if p.is_absolute() else p.parts
    for i in range(len(parts)):
        for base in (Path.cwd(), csv_path.parent, csv_path.parent.parent):
            cand = base.joinpath(*parts[i:])
            if (cand / "predictions.npz").is_file():
                return cand
    return None


def plot_reliability(runs: pd.DataFrame, csv_path: Path, path: str | Path,
                     n_bins: int | None = None, max_panels: int = MAX_PANELS) -> None:
    """Reliability diagrams of the selected runs, one panel each (at most ``max_panels``)."""
    from . import metrics as _metrics  # torch: imported only when a reliability plot is asked for

    n_bins = _metrics.N_BINS if n_bins is None else n_bins
    from matplotlib.figure import Figure

    sel = runs.sort_values(["adapter", "backbone", "protocol", "task", "seed"]).reset_index(drop=True)
    if sel.empty:
        raise ReportError("--plot-reliability: no successful runs match the filters")
    vary = [k for k in KEYS[1:] if sel[k].nunique() > 1]
    found, missing = [], []
    for _, r in sel.iterrows():
        d = _resolve_run_dir(r["run_dir"], csv_path) if r["run_dir"] else None
        (found if d is not None else missing).append((r, d))
    if missing:
        eg = "; ".join(f"line {r['line']} run_dir {r['run_dir']!r}" for r, _ in missing[:3])
        _warn(f"--plot-reliability: {len(missing)} selected run{'s' if len(missing) != 1 else ''} without "
              f"predictions.npz left out (e.g. {eg})")
    if len(found) > max_panels:
        _warn(f"--plot-reliability: {len(found)} runs selected, plotting the first {max_panels} "
              "(narrow the selection with --task/--adapter/--backbone/--protocol/--seed)")
    panels = []
    for r, d in found:
        if len(panels) == max_panels:
            break
        try:
            with np.load(d / "predictions.npz", allow_pickle=False) as z:
                probs, labels = z["probs"], z["labels"]
            bins = _metrics.reliability_bins(probs, labels, n_bins)
        except (KeyError, ValueError, OSError) as e:
            _warn(f"--plot-reliability: unusable {d / 'predictions.npz'}: {e}; left out")
            continue
        title = f"{_row_label(r, vary)} / {r['task']} / seed {r['seed']}"
        panels.append((title, bins))
    if not panels:
        raise ReportError("--plot-reliability: none of the selected runs has a readable predictions.npz")

    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(3.6 * ncols, 3.6 * nrows), constrained_layout=True)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (title, b) in zip(axes.flat, panels):
        width = np.diff(b.edges)
        ax.bar(b.edges[:-1], np.nan_to_num(b.accuracy), width=width, align="edge",
               edgecolor="black", color="tab:blue", alpha=0.8, label="accuracy")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-1 probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title}\nECE = {b.ece:.3f}", fontsize=9)
    axes.flat[0].legend(loc="upper left", fontsize=7)
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pvera-bench report",
        description="Tabulate the results CSV (one row per adapter, a column per VTAB-1k task, "
                    "group means, the mean over 19 tasks and the mean of the group means) and plot it.",
    )
    p.add_argument("--results", default="results/results.csv", help="the results CSV (default: %(default)s)")
    p.add_argument("--format", choices=("md", "csv", "latex"), default="md", help="table format (default: md)")
    p.add_argument("--out", help="write the table to this file instead of stdout")
    p.add_argument("--metric", choices=tuple(METRIC_COLUMNS), default="acc",
                   help="what to tabulate: acc=test_acc, nll=test_nll, ece=test_ece, brier=test_brier, "
                        "auroc=ood_auroc (default: acc)")
    p.add_argument("--decimals", type=int, help="decimals in md/latex cells (default: 1 for acc, 3 otherwise)")
    p.add_argument("--plot", metavar="FILE.png", help="plot the mean against params_adapter (log scale)")
    p.add_argument("--plot-reliability", metavar="FILE.png",
                   help="reliability diagrams of the selected runs, from <run_dir>/predictions.npz")
    p.add_argument("--max-panels", type=int, default=MAX_PANELS,
                   help="at most this many reliability panels (default: %(default)s)")
    p.add_argument("--bins", type=int, help="reliability bins (default: 15, as the recorded ECE)")
    sel = p.add_argument_group("run filters (table and plots; repeatable or comma-separated)")
    for name in ("task", "adapter", "backbone", "protocol", "seed"):
        sel.add_argument(f"--{name}", action="append", metavar=name.upper())
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except ReportError as e:
        print(f"pvera-bench report: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    metric_col = METRIC_COLUMNS[args.metric]
    filters = {k: _parse_filters(getattr(args, k)) for k in ("task", "adapter", "backbone", "protocol", "seed")}
    if filters["seed"]:
        filters["seed"] = {_norm_seed(s) for s in filters["seed"]}
    if filters["task"]:  # the task words of the run command: vtab, natural, specialized, structured
        filters["task"] = set(_tasks.expand(",".join(sorted(filters["task"]))))
    if args.max_panels < 1 or (args.bins is not None and args.bins < 1):
        raise ReportError("--max-panels and --bins must be at least 1")
    if args.decimals is not None and args.decimals < 0:
        raise ReportError("--decimals must be at least 0")
    csv_path = Path(args.results)
    runs = load_runs(csv_path, metric_col, filters, need_run_dir=bool(args.plot_reliability))
    if runs.empty:
        _warn("no successful runs to report")

    table = build_table(runs)
    if args.format == "csv":
        text = table[[c for c in table.columns if not c.startswith("_")]].to_csv(index=False)
    else:
        decimals = DEFAULT_DECIMALS[args.metric] if args.decimals is None else args.decimals
        header, body = format_cells(table, runs, decimals)
        notes = legend(args.metric, runs)
        text = (to_markdown if args.format == "md" else to_latex)(header, body, notes)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
        _warn(f"wrote {args.out}")
    else:
        sys.stdout.write(text)

    if args.plot:
        plot_params(table, runs, args.metric, args.plot)
        _warn(f"wrote {args.plot}")
    if args.plot_reliability:
        plot_reliability(runs, csv_path, args.plot_reliability, args.bins, args.max_panels)
        _warn(f"wrote {args.plot_reliability}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
