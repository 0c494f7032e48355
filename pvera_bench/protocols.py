"""Which splits train, which select, and when the test split is opened: once, after every choice.

A protocol is a config (``configs/protocol/*.yaml``) with these keys:

- ``select_on`` / ``val_split``: while choosing, models train on ``select_on`` and are scored on
  ``val_split``;
- ``metric``: ``acc`` (higher is better) or ``loss`` (validation cross-entropy, lower is better);
- ``checkpoint``: ``last`` (the weights after the last epoch) or ``best`` (the epoch with the best
  validation score, with optional ``patience`` / ``min_rel_delta`` early stopping);
- ``grid``: ``{dotted.config.key: [values]}``; every combination is one candidate;
- ``grid_mode``: ``separate`` (each candidate trains alone and stops on its own patience; the
  best validation score chooses) or ``joint`` (the PVeRA code's rule, ``GridSelection``: every
  candidate trains in lockstep until all have stalled; the grid's best moves only on a gain of
  more than ``min_rel_delta``, and the candidate holding it, with its weights of that epoch, is kept);
- ``final_on``: a split to retrain the chosen candidate on (VTAB: train800val200), or null to
  keep the chosen model as it is;
- ``test_eval_every``: N > 0 scores the test split every N epochs of the final fit (needs
  ``final_on``), after every choice is made, for ``test_acc_max`` and the history only;
  ``test_eval_at`` (``start``: epochs 1, N + 1, ... and the last; ``end``: N, 2N, ...) and
  ``test_eval_from`` (the first epoch that may be scored) say which (``train.test_epoch``).

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

from . import checkpoint
from .data import Split
from .schema import flatten_dotted
from .train import DivergedError, FitResult, Predictions, Selection, Trainer

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


def _grid_score(rec: Mapping[str, Any]) -> dict[str, Any]:
    """A candidate's entry in ``grid_scores`` (the CSV): its scores, or how it failed."""
    if rec["status"] != "ok":
        return dict(point=rec["point"], status=rec["status"], epoch=rec["epochs"])
    keys = ("point", "status", "val_acc", "val_loss", "best_epoch", "epochs") + (("kept_epoch",) if "kept_epoch" in rec else ())
    return {k: rec[k] for k in keys}


def _score(rec: Mapping[str, Any], metric: str) -> float:
    """Higher is better; a diverged candidate is worst."""
    if rec["status"] != "ok":
        return float("-inf")
    return rec["val_acc"] if metric == "acc" else -rec["val_loss"]


class GridSelection:
    """Which candidate a joint grid keeps, and when it stops, as the PVeRA code decides it
    (leofillioux/pvera utils/train.py): every candidate trains in lockstep and keeps its own
    ``Selection``; after each epoch the grid's best, the best of the candidates' best scores,
    moves only when it improves on the grid's previous best by more than ``min_rel_delta``
    relative to it, and then the candidate holding it, with its weights of that epoch, is the one
    kept (ties: the first); training stops once every candidate has stalled. ``update`` says
    whether the grid's best moved (the chosen candidate's weights are the ones to keep)."""

    def __init__(self, n: int, metric: str, patience: int | None, min_rel_delta: float) -> None:
        self.candidates = [Selection(metric, patience, min_rel_delta) for _ in range(n)]
        self.min_rel_delta = float(min_rel_delta or 0.0)
        self.live = list(range(n))
        self.best_score: float | None = None
        self.chosen: int | None = None
        self.epoch = 0  # of the last move: the kept weights are the chosen candidate's after this epoch

    def update(self, epoch: int, scores: Mapping[int, tuple[float, float]]) -> bool:
        """``scores``: candidate -> (val_acc, val_loss) of ``epoch``, for every live candidate."""
        for i in self.live:
            self.candidates[i].update(epoch, *scores[i])
        i = max(self.live, key=lambda j: (self.candidates[j].best_score, -j))
        score = self.candidates[i].best_score
        if self.best_score is None or score - self.best_score > self.min_rel_delta * abs(self.best_score):
            self.best_score, self.chosen, self.epoch = score, i, epoch
            return True
        return False

    def drop(self, i: int) -> None:
        """Candidate ``i`` diverged: it is scored worst. If it was the chosen one, the best live
        candidate at its own best epoch is chosen instead (its weights are its selection's)."""
        self.live.remove(i)
        if self.chosen == i:
            self.chosen = max(self.live, key=lambda j: (self.candidates[j].best_score, -j)) if self.live else None
            self.best_score = self.candidates[self.chosen].best_score if self.live else None
            self.epoch = self.candidates[self.chosen].best_epoch if self.live else 0

    @property
    def should_stop(self) -> bool:
        return all(self.candidates[i].should_stop for i in self.live)

    def state_dict(self) -> dict[str, Any]:
        return dict(live=self.live, best_score=self.best_score, chosen=self.chosen, epoch=self.epoch,
                    candidates=[c.state_dict() for c in self.candidates])

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.live, self.best_score, self.chosen, self.epoch = (list(state["live"]), state["best_score"],
                                                                state["chosen"], state["epoch"])
        for c, s in zip(self.candidates, state["candidates"]):
            c.load_state_dict(s)


def _run_joint(points: list[dict[str, Any]], p: Mapping[str, Any], build: Callable[[dict[str, Any]], Trainer],
               load: Callable[[str], Split], fit_kw: Mapping[str, Any],
               ) -> tuple[list[dict[str, Any]], int, Trainer, FitResult]:
    """Train every candidate in lockstep and choose by ``GridSelection`` (``grid_mode: joint``).
    The round's state is checkpointed as one file (``select-joint.safetensors``) every
    ``checkpoint_every`` epochs. Returns the candidates' records, the chosen index, its trainer
    (with the kept weights loaded) and its fit."""
    train, val = load(p["select_on"]), load(p["val_split"])

    def start() -> tuple[list, list]:
        trainers = [build(point) for point in points]
        return trainers, [t.start(train, val, desc=f"select {point}", tag=f"select-{i}", stamp=point, **fit_kw)
                          for i, (t, point) in enumerate(zip(trainers, points))]

    trainers, loops = start()
    grid = GridSelection(len(points), fit_kw["select"], fit_kw["patience"], fit_kw["min_rel_delta"])
    diverged: dict[int, dict[str, Any]] = {}
    kept: dict[str, torch.Tensor] | None = None  # the chosen candidate's weights after grid.epoch
    first = trainers[0]
    path = first.checkpoint_dir / "select-joint.safetensors" if first.checkpoint_dir and first.checkpoint_every else None
    saved = checkpoint.load_joint(path) if path else None
    if saved is not None:
        parts, extra, info = saved
        if info.get("points") != json.loads(json.dumps(points)) or sorted(parts) != sorted(info["grid"]["live"]):
            log.warning("discarding checkpoint %s: it was saved for the grid %s, not %s", path, info.get("points"), points)
        elif all(loops[i].restore(parts[i], f"{path} [{i}]") for i in parts):
            grid.load_state_dict(info["grid"])
            diverged = {int(i): rec for i, rec in info["diverged"].items()}
            kept = extra or None
        else:  # restore() said why; start every candidate afresh
            trainers, loops = start()
    for i in diverged:
        trainers[i] = loops[i] = None
    every = first.checkpoint_every
    while grid.live and not loops[grid.live[0]].finished and not grid.should_stop:
        scores = {}
        for i in list(grid.live):
            try:
                entry = loops[i].step()
                scores[i] = (entry["val_acc"], entry["val_loss"])
            except DivergedError as e:
                diverged[i] = dict(point=points[i], status="diverged", error=str(e), epochs=len(e.history) + 1,
                                   seconds=e.seconds, history=e.history)
                log.warning("candidate %s diverged (scored worst): %s", points[i], e)
                was_chosen = grid.chosen == i
                trainers[i] = loops[i] = None
                grid.drop(i)
                if was_chosen:  # the new choice keeps its own best epoch's weights
                    kept = loops[grid.chosen].best_state if grid.live else None
        if not grid.live:
            break
        epoch = loops[grid.live[0]].epoch
        if grid.update(epoch, scores):
            kept = trainers[grid.chosen].trainable_state()
        if path and epoch % every == 0 and not loops[grid.live[0]].finished and not grid.should_stop:
            checkpoint.save_joint(path, {i: loops[i].state() for i in grid.live}, kept or {},
                                  dict(points=points, grid=grid.state_dict(), diverged=diverged))
    if path:
        path.unlink(missing_ok=True)
    if not grid.live:
        last = next(reversed(diverged.values()))["error"]
        raise DivergedError(f"every candidate diverged ({len(points)} of {len(points)}); the last: {last}")
    if grid.should_stop:
        log.info("early stopping after epoch %d: every candidate is %s epochs past its best",
                 loops[grid.live[0]].epoch, fit_kw["patience"])
    records = []
    for i, point in enumerate(points):
        if i in diverged:
            records.append(diverged[i])
            continue
        fit = loops[i].close(keep_best=False)
        records.append(dict(point=point, status="ok", val_acc=fit.val_acc, val_loss=fit.val_loss,
                            best_epoch=fit.best_epoch, epochs=fit.epochs, seconds=fit.seconds, history=fit.history))
    i = grid.chosen
    trainer = trainers[i]
    trainer.load_trainable_state(kept)
    records[i]["kept_epoch"] = grid.epoch
    return records, i, trainer, _kept_fit(records[i])


def _kept_fit(rec: Mapping[str, Any]) -> FitResult:
    """The fit of a joint grid's chosen candidate: its weights after ``kept_epoch``."""
    at = next(e for e in rec["history"] if e["epoch"] == rec["kept_epoch"])
    return FitResult(epochs=rec["epochs"], best_epoch=rec["kept_epoch"], val_acc=at["val_acc"], val_loss=at["val_loss"],
                     seconds=rec["seconds"], history=rec["history"])


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
    joint = p.get("grid_mode", "separate") == "joint" and len(points) > 1
    if joint and not keep_best:
        raise ProtocolError(f"protocol {p.get('name')!r}: grid_mode=joint keeps each candidate's best epoch by the "
                            "validation score; it needs checkpoint: best (or set protocol.grid_mode=separate)")
    fit_kw = dict(select=metric if keep_best else None, patience=p.get("patience"),
                  min_rel_delta=float(p.get("min_rel_delta") or 0.0))
    store = CandidateStore(state_dir)
    seconds = 0.0
    chosen, val_acc, val_loss, scores = points[0], float("nan"), float("nan"), []
    model: tuple[Trainer | None, FitResult, int] | None = None  # the chosen candidate's, without final_on

    if joint:
        recs = [store.get(i, point) for i, point in enumerate(points)]
        if all(r is not None for r in recs) and any("kept_epoch" in r for r in recs):
            log.info("joint grid: finished in an earlier run, not trained again")
            for i, rec in enumerate(recs):
                for entry in rec["history"] if on_epoch is not None else ():
                    on_epoch(f"select-{i}", entry)
            i = next(j for j, r in enumerate(recs) if "kept_epoch" in r)
            model = (None, _kept_fit(recs[i]), i)
        else:
            recs, i, trainer, fit = _run_joint(points, p, build, load, fit_kw)
            if not final_on:  # the chosen model itself is kept: its weights must survive a restart
                store.save_weights(i, trainer.trainable_state())
            for j, rec in enumerate(recs):
                store.put(j, rec)
            model = (trainer, fit, i)
            del trainer
        seconds = sum(r["seconds"] for r in recs)
        scores = [_grid_score(r) for r in recs]
        chosen, val_acc, val_loss = points[i], model[1].val_acc, model[1].val_loss
        log.info("chosen on %s (joint grid, weights after epoch %d): %s", p["val_split"], model[1].best_epoch, chosen)
    elif len(points) > 1 or not final_on:
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
            scores.append(_grid_score(rec))
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
                          test_eval_every=test_every, test_eval_at=p.get("test_eval_at") or "start",
                          test_eval_from=int(p.get("test_eval_from") or 1))
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
