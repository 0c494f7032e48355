"""The results CSV's row type: every column, in a fixed order, with a one-line help each.

Declared once: ``results`` writes its header from it, :func:`make_row` refuses a column it does
not declare, and the docs reference is generated from the help texts. Adding a column is one
entry here (at the end of its group; an old CSV gains it at its end when next appended to).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    name: str
    help: str  # one line, for the generated reference


ROW: tuple[Column, ...] = (
    Column("timestamp", "when the run (or evaluation) started, ISO 8601, local time"),
    Column("task", "the task (dataset) name, e.g. cifar100 or demo"),
    Column("adapter", "the adapter name (lora, vera, pvera, ...)"),
    Column("backbone", "the backbone config name (vit_b16, vit_tiny_random, ...)"),
    Column("protocol", "the protocol config name (vtab, holdout, ...)"),
    Column("seed", "the run's seed"),
    Column("status", "ok, or failed (then error says why)"),
    Column("test_acc", "top-1 test accuracy of the final model, percent"),
    Column("test_acc_max", "best test accuracy seen during the final fit (protocol.test_eval_every), percent; optimistic"),
    Column("val_acc", "validation accuracy of the chosen candidate, percent"),
    Column("val_loss", "validation loss of the chosen candidate"),
    Column("test_nll", "test negative log-likelihood, nats (after calibration when calibration is set)"),
    Column("test_ece", "test expected calibration error, 15 bins, fraction (after calibration when set)"),
    Column("test_brier", "test Brier score (after calibration when set)"),
    Column("test_nll_uncal", "test_nll before temperature scaling (calibration=temperature rows only)"),
    Column("test_ece_uncal", "test_ece before temperature scaling (calibration=temperature rows only)"),
    Column("test_brier_uncal", "test_brier before temperature scaling (calibration=temperature rows only)"),
    Column("calibration", "the post-hoc calibration applied to the test probabilities (temperature), empty for none"),
    Column("temperature", "the fitted temperature T (calibration=temperature)"),
    Column("calibration_split", "the split the temperature was fitted on"),
    Column("mc_samples", "Monte-Carlo samples averaged per prediction (stochastic inference only)"),
    Column("mc_entropy", "mean predictive entropy of the averaged test predictions, nats"),
    Column("mc_acc_low", "2.5th percentile of the per-sample test accuracies, percent"),
    Column("mc_acc_high", "97.5th percentile of the per-sample test accuracies, percent"),
    Column("ood_task", "the OOD tasks scored, comma-separated"),
    Column("ood_auroc", "OOD detection AUROC by maximum softmax probability, mean over the OOD tasks"),
    Column("ood_auroc_entropy", "OOD detection AUROC by predictive entropy, mean over the OOD tasks (stochastic inference)"),
    Column("ood_aurocs", "JSON: the maximum-softmax-probability AUROC of each OOD task"),
    Column("ood_aurocs_entropy", "JSON: the predictive-entropy AUROC of each OOD task"),
    Column("params_adapter", "trainable parameters of the adapter (backbone side)"),
    Column("params_head", "parameters of the classification head"),
    Column("params_trainable", "all trainable parameters (adapter and head)"),
    Column("frozen_buffers", "elements of frozen buffers the adapter adds (e.g. VeRA's shared projections)"),
    Column("epochs", "epochs the final model trained"),
    Column("best_epoch", "the epoch whose weights were kept (1-based)"),
    Column("train_seconds", "training seconds, summed over every fit and resumed segment (0 for an evaluation)"),
    Column("eval_seconds", "seconds of the test pass (of the whole evaluation for an evaluation row)"),
    Column("chosen", "JSON: the grid point the protocol chose ({} without a grid)"),
    Column("grid_scores", "JSON: each grid candidate's validation scores, or how it failed"),
    Column("adapter_options", "JSON: the adapter's options as the run used them (the chosen point applied)"),
    Column("recipe", "the recipe config name, if any"),
    Column("trainer", "JSON: the resolved trainer settings"),
    Column("data_source", "where the task's splits were read from (tfds, folder, ...)"),
    Column("setting", "a short id of everything but the seed that changes the numbers (rows of one setting average)"),
    Column("config_hash", "the run key: a hash of everything that changes the row's numbers (resume and skip)"),
    Column("train_key", "a hash of what trains the model (runs sharing it share their weights)"),
    Column("eval_options", "JSON: the evaluation-only options (inference mode, OOD tasks, calibration)"),
    Column("evaluated_from", "for an evaluation row: the run directory whose saved weights were scored"),
    Column("overrides", "the command-line overrides of the run"),
    Column("error", "why a failed run failed, one line"),
    Column("run_dir", "the run directory (record.json, predictions.npz, history.csv, adapter.safetensors)"),
    Column("versions", "JSON: package versions and the git commit of the code that ran"),
)
COLUMNS = [c.name for c in ROW]
IDENTITY = ("task", "adapter", "status")  # every version of this tool's header has these



def make_row(**cells: Any) -> dict[str, Any]:
    """A row of the results CSV: ``cells`` in :data:`ROW`'s order; an unknown column is a ValueError."""
    unknown = [k for k in cells if k not in COLUMNS]
    if unknown:
        raise ValueError(f"unknown results column(s) {', '.join(unknown)}: declare them in results.ROW")
    return {c: cells[c] for c in COLUMNS if c in cells}
