"""Figures: metric vs parameters (``--plot``), reliability diagrams (``--plot-reliability``), a
settings x tasks heatmap (``--plot-heatmap``) and training curves (``--plot-curves``).

Run directories recorded in the CSV are found as recorded or, for results copied from another
machine, by the longest tail of the recorded path under the current directory, the CSV's
directory or its parent.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..metric_registry import Metric
from .load import ReportError, task_columns, warn

MAX_PANELS = 24  # reliability panels: every run of a twelve-adapter sweep fits
LABEL_WIDTH = 32  # characters per line of a row label in a figure (longer labels wrap)
CURVE_PANELS = (("train_loss", "training loss"), ("val_acc", "validation accuracy (%)"),
                ("val_loss", "validation loss"), ("test_acc", "test accuracy (%)"))


def wrap(label: str, width: int = LABEL_WIDTH) -> str:
    """A row label on lines of at most ``width`` characters (breaking after commas and spaces)."""
    import textwrap

    return "\n".join(textwrap.wrap(str(label), width, break_long_words=False, break_on_hyphens=False)) or str(label)


def row_labels(table: pd.DataFrame) -> list[str]:
    """The table's row labels for a figure, which has no backbone or protocol column: a label that
    several rows share gets what tells them apart, e.g. ``lora [vit_tiny_random]``."""
    shared = table["label"].duplicated(keep=False)
    out = []
    for dup, (_, r) in zip(shared, table.iterrows()):
        parts = [str(r[c]) for c in ("backbone", "protocol") if c in table.columns
                 and table.loc[table["label"] == r["label"], c].nunique() > 1] if dup else []
        out.append(f"{r['label']} [{', '.join(parts)}]" if parts else str(r["label"]))
    return out


def colours(n: int) -> list:
    """``n`` distinct colours: tab10 up to 10, tab20 up to 20, then evenly spaced hues."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["hsv"](i / n) for i in range(n)]


def place_labels(ax, points: list[tuple[str, float, float]], fontsize: float = 8) -> list:
    """Annotate each point ``(label, x, y)`` (data coordinates) with its label at the first of a few
    offsets whose box overlaps no label placed before it and stays inside the axes, else the least
    overlapping one; returns the annotations. Labels do not take part in the layout, so a long label
    never squeezes the axes."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer() if hasattr(fig.canvas, "get_renderer") else None
    if renderer is None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        renderer = FigureCanvasAgg(fig).get_renderer()
    ax.autoscale_view()  # the data limits as drawn, so that the boxes measured here are those drawn
    offsets = [(6, 4), (6, -12), (-6, 4), (-6, -12), (6, 14), (-6, 14), (6, -22), (-6, -22), (6, 24), (-6, -32)]
    axbox = ax.get_window_extent(renderer)
    placed, out = [], []
    for label, x, y in sorted(points, key=lambda p: (-p[2], p[1])):
        best = None
        for dx, dy in offsets:
            a = ax.annotate(label, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                            ha="left" if dx > 0 else "right", va="bottom")
            a.set_in_layout(False)
            box = a.get_window_extent(renderer)
            cost = sum(_overlap(box, b) for b in placed) + 4 * _outside(box, axbox)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, a, box)
            else:
                a.remove()
            if cost == 0:
                break
        placed.append(best[2])
        out.append(best[1])
    return out


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0) * max(h, 0)


def _outside(box, frame) -> float:
    inside = _overlap(box, frame)
    return box.width * box.height - inside


def resolve_run_dir(run_dir: str, csv_path: Path, filename: str = "predictions.npz") -> Path | None:
    """The run's directory holding ``filename``, as recorded or by the longest tail of the path."""
    p = Path(run_dir)
    if (p / filename).is_file():
        return p
    parts = p.parts[1:] if p.is_absolute() else p.parts
    for i in range(len(parts)):
        for base in (Path.cwd(), csv_path.parent, csv_path.parent.parent):
            cand = base.joinpath(*parts[i:])
            if (cand / filename).is_file():
                return cand
    return None


def plot_params(table: pd.DataFrame, runs: pd.DataFrame, metric: Metric, path) -> None:
    """The metric's mean against ``params_adapter`` (log x), one labelled point per table row."""
    from matplotlib.figure import Figure

    vtab, extra = task_columns(runs, True)
    n_vtab = len(vtab)
    use_vtab = bool((table["mean_n_tasks"] > 0).any())
    points = []  # (label, params, y)
    for _, r in table.iterrows():
        label = str(r["label"])
        if use_vtab:
            if r["mean_n_tasks"] == 0:
                warn(f"--plot: {label} has no VTAB results, left out")
                continue
            y = r["mean"]
            if r["mean_n_tasks"] < n_vtab:
                label += f" [{r['mean_n_tasks']}/{n_vtab}]"
        else:
            y = float(np.mean([r[t] for t in extra if not math.isnan(r[t])]))
        if math.isnan(r["params_adapter"]):
            warn(f"--plot: {label} has no params_adapter value, left out")
            continue
        points.append((label, float(r["params_adapter"]), float(y)))
    if not points:
        raise ReportError("--plot: no results to plot")
    col = metric.column
    if use_vtab:
        complete = all(n == n_vtab for n in table.loc[table["mean_n_tasks"] > 0, "mean_n_tasks"])
        ylabel = (f"{col}, mean over the {n_vtab} VTAB-1k tasks" if complete
                  else f"{col}, mean over the VTAB-1k tasks present ([n/{n_vtab}] per point)")
    else:
        ylabel = f"{col}, mean over the tasks present ({', '.join(extra)}; not VTAB-1k)"

    positive = [p for _, p, _ in points if p > 0]
    floor = min(positive) / 10 if positive else 1.0
    fig = Figure(figsize=(8, 5.5), constrained_layout=True)
    ax = fig.add_subplot()
    labelled = []
    for label, p, y in points:
        if p > 0:
            ax.scatter([p], [y], color="tab:blue", zorder=3)
        else:
            ax.scatter([floor], [y], facecolors="none", edgecolors="tab:blue", zorder=3)
            label += " (0 params)"
        labelled.append((wrap(label), p if p > 0 else floor, y))
    ax.set_xscale("log")
    ax.margins(x=0.3, y=0.12)
    xlabel = "params_adapter (trainable adapter parameters, log scale)"
    if any(p <= 0 for _, p, _ in points):
        xlabel += f"; 0 drawn at {floor:g}"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    fig.get_layout_engine().execute(fig)  # the axes' final place, before the labels are placed in it
    place_labels(ax, labelled)
    fig.set_layout_engine("none")  # keep the axes where they are: labels never squeeze them
    fig.savefig(path, dpi=150)


def _found(runs: pd.DataFrame, csv_path: Path, filename: str, option: str) -> list[tuple[pd.Series, Path]]:
    sel = runs.sort_values(["adapter", "backbone", "protocol", "task", "seed"]).reset_index(drop=True)
    if sel.empty:
        raise ReportError(f"{option}: no successful runs match the filters")
    found, missing = [], []
    for _, r in sel.iterrows():
        d = resolve_run_dir(r["run_dir"], csv_path, filename) if r["run_dir"] else None
        (found if d is not None else missing).append((r, d))
    if missing:
        eg = "; ".join(f"line {r['line']} run_dir {r['run_dir']!r}" for r, _ in missing[:3])
        warn(f"{option}: {len(missing)} selected run{'s' if len(missing) != 1 else ''} without {filename} "
             f"left out (e.g. {eg})")
    if not found:
        raise ReportError(f"{option}: none of the selected runs has a readable {filename}")
    return found


def plot_reliability(runs: pd.DataFrame, names: dict[str, str], csv_path: Path, path,
                     n_bins: int | None = None, max_panels: int = MAX_PANELS) -> None:
    """Reliability diagrams of the selected runs, one panel each (at most ``max_panels``)."""
    from .. import metrics as _metrics  # torch: imported only when a reliability plot is asked for

    n_bins = _metrics.N_BINS if n_bins is None else n_bins
    from matplotlib.figure import Figure

    found = _found(runs, csv_path, "predictions.npz", "--plot-reliability")
    if len(found) > max_panels:
        warn(f"--plot-reliability: {len(found)} runs selected, plotting the first {max_panels} "
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
            warn(f"--plot-reliability: unusable {d / 'predictions.npz'}: {e}; left out")
            continue
        panels.append((f"{names[r['setting']]} / {r['task']} / seed {r['seed']}", bins))
    if not panels:
        raise ReportError("--plot-reliability: none of the selected runs has a readable predictions.npz")

    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(3.6 * ncols, 3.6 * nrows + 0.4), layout="constrained")
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
        ax.set_title(f"{wrap(title, 40)}\nECE = {b.ece:.3f}", fontsize=9)
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8,
               frameon=False)
    fig.savefig(path, dpi=120)


def plot_heatmap(matrix: pd.DataFrame, title: str, path, decimals: int, diverging: bool,
                 higher_is_better: bool = True) -> None:
    """Rows x tasks heatmap of ``matrix`` (NaN = no value), each cell annotated with its value.
    ``diverging``: differences, centred on 0 (green = better, following the metric's direction)."""
    from matplotlib import colormaps
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    if matrix.empty or matrix.isna().all().all():
        raise ReportError("--plot-heatmap: nothing to draw")
    data = matrix.to_numpy(dtype=float)
    rows = [wrap(i) for i in matrix.index]
    label_in = 0.075 * max(len(line) for r in rows for line in r.split("\n"))  # inches of the widest row label
    lines = sum(r.count("\n") + 1 for r in rows)
    width = max(label_in + 0.75 * data.shape[1] + 2.0, 6.0)
    fig = Figure(figsize=(width, 1.6 + 0.22 * lines + 0.25 * data.shape[0]), constrained_layout=True)
    ax = fig.add_subplot()
    if diverging:
        lim = float(np.nanmax(np.abs(data))) or 1.0
        cmap = colormaps["RdYlGn" if higher_is_better else "RdYlGn_r"]
        im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, norm=TwoSlopeNorm(0.0, -lim, lim), aspect="auto")
    else:
        cmap = colormaps["viridis" if higher_is_better else "viridis_r"]
        im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, aspect="auto")
    for (i, j), v in np.ndenumerate(data):
        if not math.isnan(v):
            ax.text(j, i, f"{v:+.{decimals}f}" if diverging else f"{v:.{decimals}f}", ha="center", va="center",
                    fontsize=7, color="black" if diverging else "white")
    ax.set_xticks(range(data.shape[1]), [str(c) for c in matrix.columns], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(data.shape[0]), rows, fontsize=8)
    fig.suptitle(wrap(title, int(width / 0.085)), fontsize=9)  # over the whole figure, wrapped to its width
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(path, dpi=150)


def read_history(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path)
    if "epoch" not in df.columns:
        raise ValueError("no epoch column")
    if "fit" not in df.columns:
        df["fit"] = "fit"
    return df


def plot_curves(runs: pd.DataFrame, names: dict[str, str], csv_path: Path, path, fit: str | None = None,
                max_runs: int = 12) -> int:
    """Per-epoch curves of the selected runs from ``<run_dir>/history.csv``: one panel per column
    of :data:`CURVE_PANELS` that any run recorded, one line per run (the fit named ``fit``; by
    default ``final`` when the run has one, else its last fit). Returns the number of runs drawn."""
    from matplotlib.figure import Figure

    found = _found(runs, csv_path, "history.csv", "--plot-curves")
    if len(found) > max_runs:
        warn(f"--plot-curves: {len(found)} runs selected, drawing the first {max_runs} (narrow the selection with "
             "--task/--adapter/--seed)")
        found = found[:max_runs]
    curves = []
    for r, d in found:
        try:
            h = read_history(d / "history.csv")
        except (ValueError, OSError, pd.errors.ParserError) as e:
            warn(f"--plot-curves: unusable {d / 'history.csv'}: {e}; left out")
            continue
        fits = list(dict.fromkeys(h["fit"].astype(str)))
        want = fit or ("final" if "final" in fits else fits[-1])
        h = h[h["fit"].astype(str) == want].sort_values("epoch")
        if h.empty:
            warn(f"--plot-curves: {d / 'history.csv'} has no fit {want!r} (it has {', '.join(fits)}); left out")
            continue
        curves.append((f"{names[r['setting']]} / {r['task']} / s{r['seed']} ({want})", h))
    if not curves:
        raise ReportError("--plot-curves: no usable history.csv among the selected runs")
    panels = [(c, t) for c, t in CURVE_PANELS if any(c in h.columns and h[c].notna().any() for _, h in curves)]
    ncols = min(len(curves), 3 if len(panels) < 3 else 4)
    legend_rows = math.ceil(len(curves) / ncols) * max(wrap(label, 40).count("\n") + 1 for label, _ in curves)
    fig = Figure(figsize=(max(4.2 * len(panels), 9.0), 3.8 + 0.2 * legend_rows), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    palette = colours(len(curves))
    for ax, (col, title) in zip(axes, panels):
        for (label, h), colour in zip(curves, palette):
            if col in h.columns and h[col].notna().any():
                sel = h[h[col].notna()]
                ax.plot(sel["epoch"], sel[col], marker="." if len(sel) < 30 else None, label=wrap(label, 40),
                        color=colour)
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:  # a run may have no curve in the first panel
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize=7, frameon=False)
    fig.savefig(path, dpi=130)
    return len(curves)
