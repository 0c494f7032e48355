"""The metric registry: every metric a run records and the report can tabulate, defined once.

A :class:`Metric` names the CSV column, says what the number is, how many decimals a table shows
and whether higher or lower is better. The run's log line, the loggers' final metrics, the report's
``--metric`` choices, its comparisons (which sign is a win), ranks and plots all read this table;
adding a metric is one entry here (and its column in ``results.COLUMNS``).

No torch here: ``pvera-bench report`` imports this module without importing torch
(``pvera_bench.metrics`` re-exports it for the code that computes the metrics).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str  # the --metric choice
    column: str  # the results CSV column
    description: str
    decimals: int  # in md / latex cells
    higher_is_better: bool
    optimistic: bool = False  # chosen on the test split: not a fair final number

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("acc", "test_acc", "top-1 test accuracy of the final model, percent", 1, True),
    Metric("acc_max", "test_acc_max", "best top-1 test accuracy over the test evaluations made during the final "
           "fit (protocol.test_eval_every), percent; chosen on the test split, optimistic", 1, True, optimistic=True),
    Metric("val_acc", "val_acc", "top-1 validation accuracy of the chosen candidate, percent", 1, True),
    Metric("nll", "test_nll", "test negative log-likelihood, nats", 3, False),
    Metric("ece", "test_ece", "test expected calibration error (15 bins), fraction", 3, False),
    Metric("brier", "test_brier", "test Brier score", 3, False),
    Metric("auroc", "ood_auroc", "OOD detection AUROC by maximum softmax probability (the mean over the OOD tasks "
           "when ood_task names several)", 3, True),
    Metric("auroc_entropy", "ood_auroc_entropy", "OOD detection AUROC by predictive entropy (PVeRA inference=mc; "
           "the mean over the OOD tasks when ood_task names several)", 3, True),
)}


def by_column(column: str) -> Metric | None:
    """The metric recorded in ``column``, if it is one."""
    return next((m for m in METRICS.values() if m.column == column), None)


def format_value(column: str, value: float) -> str:
    """``value`` with its metric's decimals (+1, for a log line), or ``repr`` for other columns."""
    m = by_column(column)
    return f"{value:.{m.decimals + 1}f}" if m is not None else repr(value)
