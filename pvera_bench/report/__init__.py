"""``pvera-bench report``: the results CSV as tables, comparisons, ranks and figures.

One module per view, each readable alone:

* :mod:`.load`: reading the CSV, which runs count, grouping runs into settings (a table row is one
  setting: adapter and options, backbone, recipe or trainer, protocol; seeds are what a cell
  averages) and the rows' labels;
* :mod:`.table`: the main table (Markdown, CSV, LaTeX);
* :mod:`.compare`: ``--compare A B``, paired differences with intervals and tests;
* :mod:`.ranks`: ``--ranks`` / ``--plot-ranks``, average ranks, Friedman, Nemenyi;
* :mod:`.references`: ``--reference NAME``, published numbers shipped in ``references/``;
* :mod:`.figures`: ``--plot``, ``--plot-reliability``, ``--plot-heatmap``, ``--plot-curves``;
* :mod:`.cli`: the options, and which view runs.

Which runs count: ``status`` other than ``ok`` is excluded and counted on stderr; an ``ok`` run
with an empty metric cell is skipped with a note; the filters ``--task --adapter --backbone
--protocol --seed`` select runs for every view; the same (setting, task, seed) twice: the last
line wins, with a note. Errors in the input are one line and exit code 2.

``--format csv`` columns: ``adapter, backbone, protocol, recipe, label, setting, adapter_options,
code_versions``, then ``<task>, <task>_std, <task>_n_seeds`` per task column, then
``natural, natural_n_tasks, specialized, specialized_n_tasks, structured, structured_n_tasks,
mean, mean_n_tasks, mean_of_groups, mean_of_groups_n_groups, params_adapter``; with
``--reference`` also the published and Δ rows and a ``kind`` column (ours | published | delta).
"""

from ..metric_registry import METRICS
from .cli import build_parser, main
from .figures import resolve_run_dir as _resolve_run_dir
from .load import ReportError, load_runs
from .table import build_table, csv_columns

METRIC_COLUMNS = {m.name: m.column for m in METRICS.values()}

__all__ = ["METRIC_COLUMNS", "ReportError", "build_parser", "build_table", "csv_columns", "load_runs", "main",
           "_resolve_run_dir"]
