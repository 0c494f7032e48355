"""Which splits train, which select, and when the test split is opened: once, after every choice.

A protocol is a config (``configs/protocol/*.yaml``) with these keys:

- ``select_on`` / ``val_split``: while choosing, models train on ``select_on`` and are scored on
  ``val_split``;
- ``metric``: ``acc`` (higher is better) or ``loss`` (validation cross-entropy, lower is better);
- ``checkpoint``: ``last`` (the weights after the last epoch) or ``best`` (the epoch with the best
  validation score, with optional ``patience`` / ``min_rel_delta`` early stopping);
- ``grid``: ``{dotted.config.key: [values]}``; every combination is one candidate;
- ``final_on``: a split to retrain the chosen candidate on (VTAB: train800val200), or null to
  keep the chosen model as it is;
- ``test_eval_every``: N > 0 scores the test split every N epochs of the final fit (needs
  ``final_on``), after every choice is made, for ``test_acc_max`` and the history only.

The test split is loaded only after every choice is made; nothing before that sees it.

With a ``state_dir`` the protocol is durable: each finished candidate's scores (and, when the
chosen model itself is kept, the best candidate's weights) are saved there, so a resumed run
skips finished candidates; the final fit's checkpoint is stamped with the chosen point. A
candidate whose loss diverges is recorded as ``diverged`` and scored worst; the run fails only
when every candidate diverges.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import load_file, save_file

from .data import Split
from .schema import flatten_dotted
from .train import DivergedError, FitResult, Predictions, Trainer

log = logging.getLogger(__name__)


class ProtocolError(ValueError):
    """A protocol config that cannot be run (a user error: one message, no traceback)."""


def grid_points(grid: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in order; one empty point for an empty grid.

    Keys are dotted config keys (``trainer.lr_adapter``); nested mappings are flattened, so
    ``{trainer: {lr_adapter: [...]}}`` means the same."""
    grid = flatten_dotted(grid or {})
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
            test_acc_max=self.fit.test_acc_max,
            chosen=json.dumps(self.chosen, sort_keys=True), grid_scores=json.dumps(self.grid_scores),
            train_seconds=round(self.train_seconds, 3), eval_seconds=round(self.test.seconds, 3),
        )


class CandidateStore:
    """Finished candidates of a grid, kept in ``state_dir`` (beside the fits' checkpoints):
    ``select-<i>.json`` holds a candidate's scores and history; ``select-<i>.best.safetensors``
    the weights of the best candidate so far, when the chosen model is kept as it is. Without a
    directory it keeps nothing."""

    def __init__(self, state_dir: str | Path | None) -> None:
        self.dir = Path(state_dir) if state_dir else None

    def _path(self, i: int, suffix: str) -> Path:
        return self.dir / f"select-{i}{suffix}"

    def get(self, i: int, point: dict[str, Any]) -> dict[str, Any] | None:
        if self.dir is None or not self._path(i, ".json").is_file():
            return None
        try:
            rec = json.loads(self._path(i, ".json").read_text())
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable candidate record %s (%s)", self._path(i, ".json"), e)
            return None
        if rec.get("point") != json.loads(json.dumps(point)):
            log.warning("ignoring %s: it records %s, not %s", self._path(i, ".json"), rec.get("point"), point)
            return None
        return rec

    def put(self, i: int, rec: dict[str, Any]) -> None:
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self._path(i, ".json.tmp")
        tmp.write_text(json.dumps(rec))
        os.replace(tmp, self._path(i, ".json"))

    def save_weights(self, i: int, state: dict[str, torch.Tensor]) -> None:
        """Keep candidate ``i``'s weights (the best so far)."""
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self._path(i, ".best.safetensors.tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))
        os.replace(tmp, self._path(i, ".best.safetensors"))

    def drop_weights(self, i: int) -> None:
        if self.dir is not None:
            self._path(i, ".best.safetensors").unlink(missing_ok=True)

    def load_weights(self, i: int) -> dict[str, torch.Tensor] | None:
        path = self._path(i, ".best.safetensors") if self.dir else None
        return load_file(str(path)) if path is not None and path.is_file() else None

    def clear(self, n: int) -> None:
        if self.dir is None:
            return
        for i in range(n):
            for suffix in (".json", ".best.safetensors"):
                self._path(i, suffix).unlink(missing_ok=True)


def _score(rec: Mapping[str, Any], metric: str) -> float:
    """Higher is better; a diverged candidate is worst."""
    if rec["status"] != "ok":
        return float("-inf")
    return rec["val_acc"] if metric == "acc" else -rec["val_loss"]


def run_protocol(p: Mapping[str, Any], build: Callable[[dict[str, Any]], Trainer],
                 load: Callable[[str], Split], *, state_dir: str | Path | None = None,
                 on_epoch: Callable[[str, dict], None] | None = None) -> Outcome:
    """Run protocol ``p``: ``build(point)`` makes a fresh trainer with the grid values ``point``
    applied; ``load(split)`` opens a split. ``state_dir`` makes the grid durable (see above);
    ``on_epoch`` gets the history of candidates finished in an earlier run. Returns the test
    predictions of the final model."""
    points = grid_points(p.get("grid"))
    metric, ckpt = p.get("metric", "acc"), p.get("checkpoint", "last")
    if metric not in ("acc", "loss") or ckpt not in ("best", "last"):
        raise ProtocolError(f"protocol {p.get('name')!r}: metric must be acc or loss (got {metric!r}) and checkpoint "
                            f"best or last (got {ckpt!r})")
    final_on = p.get("final_on")
    test_every = int(p.get("test_eval_every") or 0)
    if test_every and not final_on:
        raise ProtocolError(f"protocol {p.get('name')!r}: test_eval_every={test_every} scores the test split during the "
                            "final fit, and this protocol has none (final_on is null); set protocol.test_eval_every=0")
    keep_best = ckpt == "best"
    fit_kw = dict(select=metric if keep_best else None, patience=p.get("patience"),
                  min_rel_delta=float(p.get("min_rel_delta") or 0.0))
    store = CandidateStore(state_dir)
    seconds = 0.0
    chosen, val_acc, val_loss, scores = points[0], float("nan"), float("nan"), []
    model: tuple[Trainer | None, FitResult, int] | None = None  # the chosen candidate's, without final_on

    if len(points) > 1 or not final_on:
        best: tuple[float, dict] | None = None
        last_error = ""
        for i, point in enumerate(points):
            rec, trainer = store.get(i, point), None
            if rec is not None:
                log.info("candidate %s: finished in an earlier run (%s), not trained again", point, rec["status"])
                for entry in rec["history"]:
                    if on_epoch is not None:
                        on_epoch(f"select-{i}", entry)
            else:
                train, val = load(p["select_on"]), load(p["val_split"])
                trainer = build(point)
                try:
                    fit = trainer.fit(train, val, desc=f"select {point}" if point else "train", tag=f"select-{i}",
                                      stamp=point, **fit_kw)
                    rec = dict(point=point, status="ok", val_acc=fit.val_acc, val_loss=fit.val_loss,
                               best_epoch=fit.best_epoch, epochs=fit.epochs, seconds=fit.seconds, history=fit.history)
                    log.info("candidate %s: val_acc %.2f val_loss %.4f", point, fit.val_acc, fit.val_loss)
                except DivergedError as e:
                    trainer = None
                    rec = dict(point=point, status="diverged", error=str(e), epochs=len(e.history) + 1,
                               seconds=e.seconds, history=e.history)
                    log.warning("candidate %s diverged (scored worst): %s", point, e)
            seconds += rec["seconds"]
            last_error = rec.get("error", last_error)
            scores.append({k: rec.get(k) for k in ("point", "status", "val_acc", "val_loss", "best_epoch")}
                          if rec["status"] == "ok" else dict(point=point, status=rec["status"], epoch=rec["epochs"]))
            previous = model[2] if model else None
            if rec["status"] == "ok" and (best is None or _score(rec, metric) > best[0]):
                if not final_on:  # the chosen model itself is kept: its weights must survive a restart
                    if trainer is not None:
                        store.save_weights(i, trainer.trainable_state())
                    fit = FitResult(epochs=rec["epochs"], best_epoch=rec["best_epoch"], val_acc=rec["val_acc"],
                                    val_loss=rec["val_loss"], seconds=rec["seconds"], history=rec["history"])
                    model = (trainer, fit, i)
                best = (_score(rec, metric), rec)
            store.put(i, rec)  # after the weights: a record means everything it needs is saved
            if model and previous is not None and previous != model[2]:
                store.drop_weights(previous)  # no longer the best: only now, once ``i``'s record is saved
            del trainer  # only ``model`` holds a candidate from here on
        if best is None:
            raise DivergedError(last_error if len(points) == 1 else
                                f"every candidate diverged ({len(points)} of {len(points)}); the last: {last_error}")
        chosen, val_acc, val_loss = best[1]["point"], best[1]["val_acc"], best[1]["val_loss"]
        log.info("chosen on %s: %s", p["val_split"], chosen)

    test_split = None
    if final_on:
        model = None  # free the chosen candidate before the final model is built
        trainer = build(chosen)
        final = load(final_on)
        if test_every:  # every choice is made: the test split may be scored along the final fit
            test_split = load(p["test_split"])
        fit = trainer.fit(final, desc="final", select=None, tag="final", stamp=chosen, test=test_split,
                          test_eval_every=test_every)
        seconds += fit.seconds
    else:
        trainer, fit, i = model
        if trainer is None:  # chosen in an earlier run: rebuild it with the weights it kept
            weights = store.load_weights(i)
            if weights is None:
                raise ProtocolError(f"the weights of the chosen candidate {chosen} are missing from {state_dir}; "
                                    "delete that directory to run the grid again")
            trainer = build(chosen)
            trainer.load_trainable_state({k: v.to(trainer.device) for k, v in weights.items()})

    # Every choice is final: now, and only now (or just before the final fit), the test split is opened.
    test = trainer.predict(test_split if test_split is not None else load(p["test_split"]))
    store.clear(len(points))
    return Outcome(trainer, test, fit, chosen, val_acc, val_loss, scores, seconds)
