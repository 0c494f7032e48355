"""What a fit keeps and when it stops (``Selection``, the PVeRA code's rule), what it returns
(``FitResult``) and when it scores the test split (``test_epoch``). No torch: plain bookkeeping
that the epoch loop (``train.FitLoop``), the grids (``protocols``) and checkpoints share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass
class FitResult:
    epochs: int  # epochs actually trained
    best_epoch: int  # the epoch whose weights were kept (1-based)
    val_acc: float = float("nan")
    val_loss: float = float("nan")
    seconds: float = 0.0  # training seconds, accumulated over every resumed segment
    history: list[dict] = field(default_factory=list)

    @property
    def test_acc_max(self) -> float:
        """The best test accuracy seen during the fit (``test_eval_every``); NaN when none was."""
        accs = [e["test_acc"] for e in self.history if "test_acc" in e]
        return max(accs) if accs else float("nan")


def test_epoch(epoch: int, epochs: int, every: int, at: str = "start", first: int = 1) -> bool:
    """Whether the test split is scored after ``epoch`` (1-based) of ``epochs``: every ``every``
    epochs from ``first`` on; ``at="start"``: epochs 1, N + 1, 2N + 1, ... and the last (NOAH's
    ``epoch % val_interval == 0`` on 0-based epochs), ``at="end"``: epochs N, 2N, ... (V-PETL-Bench's
    ``ep % 10 == 9``)."""
    if not every or epoch < first:
        return False
    if at == "end":
        return epoch % every == 0
    return (epoch - 1) % every == 0 or epoch == epochs


class Selection:
    """Which epoch's weights a fit keeps and when it stops, as the PVeRA code decides it.

    ``metric``: ``acc`` (higher is better), ``loss`` (lower is better) or None (keep the last
    epoch, never stop early). The best score and its epoch move only when a validation score
    improves on the best by more than ``min_rel_delta`` relative to it (for the loss:
    ``(best - loss) / best > min_rel_delta``; the PVeRA code's ``relative_epsilon`` is this in
    percent); the fit stops once ``patience`` or more epochs have passed since the best epoch.
    ``update`` says whether the epoch just scored is the new best (its weights are the ones to keep).
    """

    def __init__(self, metric: str | None = None, patience: int | None = None, min_rel_delta: float = 0.0) -> None:
        if metric not in (None, "acc", "loss"):
            raise ValueError(f"selection metric must be acc, loss or None, not {metric!r}")
        self.metric, self.patience, self.min_rel_delta = metric, patience, float(min_rel_delta or 0.0)
        self.epoch = 0  # the last epoch scored
        self.best_epoch = 0
        self.best_score: float | None = None
        self.val_acc = self.val_loss = float("nan")  # of the best epoch (of the last one without a metric)

    def update(self, epoch: int, val_acc: float, val_loss: float) -> bool:
        self.epoch = epoch
        if self.metric is None:
            self.val_acc, self.val_loss = val_acc, val_loss
            return False
        score = val_acc if self.metric == "acc" else -val_loss
        improved = self.best_score is None or score - self.best_score > self.min_rel_delta * abs(self.best_score)
        if improved:
            self.best_score, self.best_epoch, self.val_acc, self.val_loss = score, epoch, val_acc, val_loss
        return improved

    @property
    def should_stop(self) -> bool:
        return (self.patience is not None and self.best_score is not None
                and self.epoch - self.best_epoch >= int(self.patience))

    def state_dict(self) -> dict[str, Any]:
        return dict(epoch=self.epoch, best_epoch=self.best_epoch, best_score=self.best_score,
                    val_acc=self.val_acc, val_loss=self.val_loss)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.best_epoch, self.best_score = state["epoch"], state["best_epoch"], state["best_score"]
        self.val_acc, self.val_loss = state["val_acc"], state["val_loss"]
