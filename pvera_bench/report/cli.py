"""``pvera-bench report``: the command line. Reads the CSV (load), then one view: the table
(default), ``--compare A B``, ``--ranks``; figures on request; ``--reference`` adds published rows."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from .. import tasks as _tasks
from ..metric_registry import METRICS
from ..rundir import atomic_write
from . import compare as _compare
from . import figures, ood_matrix, ranks as _ranks, references as _refs
from .load import ReportError, labels, load_runs, norm_seed, parse_filters, task_columns, warn
from .table import build_table, format_cells, header, legend, public, render, row_cells

FILTERS = ("task", "adapter", "backbone", "protocol", "seed")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pvera-bench report",
        description="Tabulate the results CSV (one row per setting, a column per task with results, group "
                    "means, the mean over 19 tasks and the mean of the group means), compare settings, rank "
                    "them, set them beside published numbers, and plot them.",
    )
    p.add_argument("--results", default="results/results.csv", help="the results CSV (default: %(default)s)")
    p.add_argument("--format", choices=("md", "csv", "latex"), default="md", help="output format (default: md)")
    p.add_argument("--out", help="write the table to this file instead of stdout")
    p.add_argument("--metric", choices=tuple(METRICS), default="acc",
                   help="what to tabulate: " + "; ".join(f"{m.name}={m.column}" for m in METRICS.values())
                        + " (default: acc)")
    p.add_argument("--decimals", type=int, help="decimals in md/latex cells (default: the metric's)")
    p.add_argument("--all-tasks", action="store_true", help="a column for each of the 19 VTAB-1k tasks, "
                   "with results or not (default: only tasks with results)")
    view = p.add_mutually_exclusive_group()
    view.add_argument("--compare", nargs=2, metavar=("A", "B"),
                      help="paired comparison of two rows (an adapter name, a row label such as 'lora (r=16)', "
                           "or a setting id from --format csv) instead of the table")
    view.add_argument("--ranks", action="store_true", help="average ranks and the Friedman test instead of the table")
    p.add_argument("--rank-blocks", choices=("task", "task-seed"), default="task",
                   help="what --ranks / --plot-ranks rank over: tasks (default) or (task, seed) pairs")
    p.add_argument("--reference", metavar="NAME",
                   help="published rows beside ours with a Δ row per matched adapter (" +
                        ", ".join(_ref_names()) + ")")
    p.add_argument("--plot", metavar="FILE.png", help="plot the mean against params_adapter (log scale)")
    p.add_argument("--plot-reliability", metavar="FILE.png",
                   help="reliability diagrams of the selected runs, from <run_dir>/predictions.npz")
    p.add_argument("--max-panels", type=int, default=figures.MAX_PANELS,
                   help="at most this many reliability panels (default: %(default)s)")
    p.add_argument("--bins", type=int, help="reliability bins (default: 15, as the recorded ECE)")
    p.add_argument("--plot-ranks", metavar="FILE.png", help="critical-difference diagram of the average ranks (Nemenyi)")
    p.add_argument("--plot-heatmap", metavar="FILE.png",
                   help="rows x tasks heatmap of the metric, or of its difference to --baseline or to --reference")
    p.add_argument("--baseline", metavar="ROW", help="the row --plot-heatmap subtracts (as --compare names rows)")
    p.add_argument("--plot-curves", metavar="FILE.png",
                   help="per-epoch curves of the selected runs, from <run_dir>/history.csv")
    p.add_argument("--plot-ood-matrix", metavar="FILE.png",
                   help="per setting: training task x OOD task AUROC (from ood_task lists: pvera-bench evaluate RUN "
                        "ood_task=vtab); --metric auroc tabulates the mean AUROC per setting")
    p.add_argument("--fit", help="which fit of history.csv --plot-curves draws (default: final, else the last)")
    sel = p.add_argument_group("run filters (table and plots; repeatable or comma-separated)")
    for name in FILTERS:
        sel.add_argument(f"--{name}", action="append", metavar=name.upper(), help=f"only runs of this {name}")
    return p


def _ref_names() -> list[str]:
    try:
        return list(_refs.available())
    except Exception:  # noqa: BLE001 - a broken data file must not break --help
        return []


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except ReportError as e:
        print(f"pvera-bench report: error: {e}", file=sys.stderr)
        return 2


def _write(args, text: str) -> None:
    if args.out:
        atomic_write(args.out, text)
        warn(f"wrote {args.out}")
    else:
        sys.stdout.write(text)


def _run(args: argparse.Namespace) -> int:
    metric = METRICS[args.metric]
    filters = {k: parse_filters(getattr(args, k)) for k in FILTERS}
    if filters["seed"]:
        filters["seed"] = {norm_seed(s) for s in filters["seed"]}
    if filters["task"]:  # the task words of the run command: vtab, natural, specialized, structured
        filters["task"] = set(_tasks.expand(",".join(sorted(filters["task"]))))
    if args.max_panels < 1 or (args.bins is not None and args.bins < 1):
        raise ReportError("--max-panels and --bins must be at least 1")
    if args.decimals is not None and args.decimals < 0:
        raise ReportError("--decimals must be at least 0")
    ref = _refs.get(args.reference) if args.reference else None
    if ref is not None and not args.metric.startswith("acc"):
        raise ReportError(f"--reference compares accuracies: use --metric acc or acc_max (not {args.metric})")
    if args.baseline and not args.plot_heatmap:
        raise ReportError("--baseline is for --plot-heatmap")
    decimals = metric.decimals if args.decimals is None else args.decimals
    csv_path = Path(args.results)
    runs, settings = load_runs(csv_path, metric.column, filters,
                               need_run_dir=bool(args.plot_reliability or args.plot_curves))
    if runs.empty:
        raise ReportError("no successful runs to report")
    table = build_table(runs, settings, args.all_tasks)
    names = dict(zip(table["setting"], table["label"]))
    vtab, extra = task_columns(runs, args.all_tasks)
    all_vtab = task_columns(runs, True)[0]
    shown_tasks = vtab + extra

    published = deltas = None
    if ref is not None:
        published = _refs.published_rows(ref, all_vtab)
        deltas = _refs.delta_rows(table, published, all_vtab, shown_tasks)

    if args.compare:
        a, b = (_compare.resolve(x, table) for x in args.compare)
        if a == b:
            raise ReportError("--compare: A and B are the same row")
        c = _compare.compare(runs, a, b, metric, decimals, shown_tasks)
        if args.format == "csv":
            text = _compare.to_frame(c, names[a], names[b]).to_csv(index=False)
        else:
            head, body, notes = _compare.cells(c, names[a], names[b], metric, decimals)
            text = render(args.format, head, body, notes, 1)
    elif args.ranks:
        text = _ranks.grouped_text(_ranks.compute_groups(runs, names, metric, args.rank_blocks), args.format,
                                   decimals, render)
    else:
        text = _table_text(args, table, runs, metric, decimals, ref, published, deltas, shown_tasks, all_vtab)
    _write(args, text)

    if args.plot:
        figures.plot_params(table, runs, metric, args.plot)
        warn(f"wrote {args.plot}")
    if args.plot_reliability:
        figures.plot_reliability(runs, names, csv_path, args.plot_reliability, args.bins, args.max_panels)
        warn(f"wrote {args.plot_reliability}")
    if args.plot_ranks:
        _ranks.plot(_ranks.compute_groups(runs, names, metric, args.rank_blocks), metric, args.plot_ranks)
        warn(f"wrote {args.plot_ranks}")
    if args.plot_heatmap:
        _heatmap(args, table, metric, decimals, shown_tasks, deltas, ref)
        warn(f"wrote {args.plot_heatmap}")
    if args.plot_curves:
        n = figures.plot_curves(runs, names, csv_path, args.plot_curves, args.fit)
        warn(f"wrote {args.plot_curves} ({n} run{'s' if n != 1 else ''})")
    if args.plot_ood_matrix:
        panels = ood_matrix.matrices(csv_path, filters, labels)
        ood_matrix.plot(panels, args.plot_ood_matrix)
        warn(f"wrote {args.plot_ood_matrix} ({len(panels)} panel{'s' if len(panels) != 1 else ''})")
    return 0


def _table_text(args, table, runs, metric, decimals, ref, published, deltas, shown_tasks, all_vtab) -> str:
    if args.format == "csv":
        out = public(table)
        if ref is not None:
            extra_rows = pd.concat([published, deltas], ignore_index=True)
            out = pd.concat([out.assign(kind="ours"), extra_rows.reindex(columns=list(out.columns) + ["kind"])],
                            ignore_index=True)
        return out.to_csv(index=False)
    head, body, n_label = format_cells(table, runs, decimals, args.all_tasks)
    notes = legend(metric, runs, table, args.all_tasks)
    if ref is not None:
        averages = len(head) > n_label + len(shown_tasks) + 1
        label_cols, _ = header(runs, shown_tasks, averages)
        for frame in (published, deltas):
            for _, r in frame.iterrows():
                cells = row_cells(_as_row(r, label_cols, shown_tasks), label_cols, shown_tasks, len(all_vtab), decimals,
                                  averages=averages)
                if r.get("kind") == "published":
                    cells[-1] = str(r["_published_params"])
                elif r.get("kind") == "delta":
                    cells[len(label_cols):-1] = [_signed(c) for c in cells[len(label_cols):-1]]
                body.append(cells)
        notes += _refs.legend(ref, args.metric, metric.description, deltas)
    return render(args.format, head, body, notes, n_label)


def _as_row(r: pd.Series, label_cols: list[str], tasks: list[str]) -> dict:
    row = {k: r.get(k, "") for k in label_cols}
    row["label"] = r["label"]
    for t in tasks:
        row[t] = r.get(t, math.nan)
        row[f"{t}_n_seeds"] = 1
    for k, v in r.items():
        if k not in row:
            row[k] = v
    return {k: (math.nan if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in row.items()}


def _signed(cell: str) -> str:
    return cell if not cell or cell.startswith("-") else "+" + cell


def _heatmap(args, table, metric, decimals, tasks, deltas, ref) -> None:
    cols = tasks + (["mean"] if (table["mean_n_tasks"] > 0).any() else [])
    if args.baseline:
        base = _compare.resolve(args.baseline, table)
        brow = table[table["setting"] == base].iloc[0]
        rest = table[table["setting"] != base]
        matrix = pd.DataFrame([[r[c] - brow[c] for c in cols] for _, r in rest.iterrows()],
                              index=figures.row_labels(rest), columns=cols)
        title = f"{metric.column}: difference to {brow['label']} (row − baseline)"
        figures.plot_heatmap(matrix, title, args.plot_heatmap, decimals, True, metric.higher_is_better)
    elif ref is not None:
        if deltas.empty:
            raise ReportError(f"--plot-heatmap: no row matches a published row of {ref.name}")
        matrix = deltas.set_index("label").reindex(columns=cols).astype(float)
        title = f"{metric.column}: ours − published ({ref.title})"
        figures.plot_heatmap(matrix, title, args.plot_heatmap, decimals, True, metric.higher_is_better)
    else:
        matrix = pd.DataFrame(table[cols].astype(float).to_numpy(), index=figures.row_labels(table), columns=cols)
        figures.plot_heatmap(matrix, f"{metric.column} ({metric.description})", args.plot_heatmap, decimals, False,
                             metric.higher_is_better)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
