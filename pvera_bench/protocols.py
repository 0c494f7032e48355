"""Which splits train, which select, and when the test split is opened: once, after every choice.

A protocol is a config (``configs/protocol/*.yaml``) with these keys:

- ``select_on`` / ``val_split``: while choosing, models train on ``select_on`` and are scored on
  ``val_split``;
- ``metric``: ``acc`` (higher is better) or ``loss`` (validation cross-entropy, lower is better);
- ``checkpoint``: ``last`` (the weights after the last epoch) or ``best`` (the epoch with the best
  validation score, with optional ``patience`` / ``min_rel_delta`` early stopping);
- ``grid``: ``{dotted.config.key: [values]}``; every combination is one candidate;
- ``final_on``: a split to retrain the chosen candidate on (VTAB: train800val200), or null to
  keep the chosen model as it is.

The test split is loaded only after the final model exists; nothing before that sees it.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .data import Split
from .train import FitResult, Predictions, Trainer

log = logging.getLogger(__name__)


class ProtocolError(ValueError):
    """A protocol config that cannot be run (a user error: one message, no traceback)."""


def _flatten(grid: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in grid.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def grid_points(grid: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in order; one empty point for an empty grid.

    Keys are dotted config keys (``trainer.lr_adapter``); nested mappings are flattened, so
    ``{trainer: {lr_adapter: [...]}}`` means the same."""
    grid = _flatten(grid or {})
    keys = list(grid)
    values = [[v] if isinstance(v, (str, int, float, bool)) else list(v) for v in grid.values()]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


@dataclass
class Outcome:
    trainer: Trainer
    test: Predictions
    fit: FitResult  # the fit that produced the evaluated model
    chosen: dict[str, Any]
    val_acc: float
    val_loss: float
    grid_scores: list[dict[str, Any]]
    train_seconds: float

    def record(self) -> dict[str, Any]:
        return dict(
            val_acc=self.val_acc, val_loss=self.val_loss, epochs=self.fit.epochs, best_epoch=self.fit.best_epoch,
            chosen=json.dumps(self.chosen, sort_keys=True), grid_scores=json.dumps(self.grid_scores),
            train_seconds=round(self.train_seconds, 3), eval_seconds=round(self.test.seconds, 3),
        )


def run_protocol(p: Mapping[str, Any], build: Callable[[dict[str, Any]], Trainer],
                 load: Callable[[str], Split]) -> Outcome:
    """Run protocol ``p``: ``build(point)`` makes a fresh trainer with the grid values ``point``
    applied; ``load(split)`` opens a split. Returns the test predictions of the final model."""
    points = grid_points(p.get("grid"))
    metric, ckpt = p.get("metric", "acc"), p.get("checkpoint", "last")
    if metric not in ("acc", "loss") or ckpt not in ("best", "last"):
        raise ProtocolError(f"protocol {p.get('name')!r}: metric must be acc or loss (got {metric!r}) and checkpoint "
                            f"best or last (got {ckpt!r})")
    keep_best = ckpt == "best"
    fit_kw = dict(select=metric if keep_best else None, patience=p.get("patience"),
                  min_rel_delta=float(p.get("min_rel_delta") or 0.0))
    final_on = p.get("final_on")
    seconds = 0.0
    chosen, val_acc, val_loss, scores = points[0], float("nan"), float("nan"), []
    best: tuple[float, Trainer, FitResult] | None = None

    if len(points) > 1 or not final_on:
        train, val = load(p["select_on"]), load(p["val_split"])
        for i, point in enumerate(points):
            trainer = build(point)
            fit = trainer.fit(train, val, desc=f"select {point}" if point else "train", tag=f"select-{i}", **fit_kw)
            seconds += fit.seconds
            score = fit.val_acc if metric == "acc" else -fit.val_loss
            scores.append(dict(point=point, val_acc=fit.val_acc, val_loss=fit.val_loss, best_epoch=fit.best_epoch))
            log.info("candidate %s: val_acc %.2f val_loss %.4f", point, fit.val_acc, fit.val_loss)
            if best is None or score > best[0]:
                best, chosen, val_acc, val_loss = (score, trainer, fit), point, fit.val_acc, fit.val_loss
            del trainer  # only ``best`` holds a candidate from here on
        log.info("chosen on %s: %s", p["val_split"], chosen)

    if final_on:
        best = None  # free the chosen candidate before the final model is built
        trainer = build(chosen)
        fit = trainer.fit(load(final_on), desc="final", select=None, tag="final")
        seconds += fit.seconds
    else:
        _, trainer, fit = best

    # Every choice is final: now, and only now, the test split is opened.
    test = trainer.predict(load(p["test_split"]))
    return Outcome(trainer, test, fit, chosen, val_acc, val_loss, scores, seconds)
