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

Everything a protocol keeps on disk goes through the run's ``checkpoint.RunState``: each
finished candidate is committed (its record and, when the chosen model itself is kept, the best
candidate's weights), then the final model (its weights and every choice, before the test pass),
so a run killed at any point resumes without training anything that had finished. A candidate
whose loss diverges is recorded as ``diverged`` and scored worst; the run fails only when every
candidate diverges.

What a protocol config means (which fits run, whether validation chooses, which options are
read, its refusals) is derived once, by :func:`pvera_bench.plan.plan_of`; this module runs that
plan. The three parts read top to bottom: ``separate_grid``, ``joint_grid`` and ``final_fit``;
``run_protocol`` chains them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from . import checkpoint
from .checkpoint import RunState
from .data import Split
from .plan import TEST_STREAM, Plan, ProtocolError, plan_of
from .train import DivergedError, FitResult, Predictions, Selection, Trainer

log = logging.getLogger(__name__)

__all__ = ["Candidate", "GridSelection", "Outcome", "ProtocolError", "run_protocol"]


def _json(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(obj))


@dataclass
class Candidate:
    """One grid point of a run. ``index`` is its place in the grid (its fit is ``select-<index>``;
    ``build`` gets the candidate, so a model may depend on it), ``point`` its dotted config
    values. Once trained: ``status`` ``ok`` or ``diverged``, its ``fit`` (the fit's own selection:
    best epoch and its scores; a diverged fit's epochs and history), the ``error`` of a diverged
    one and, for the candidate a joint grid keeps, ``kept_epoch`` (its weights after that epoch)."""

    index: int
    point: dict[str, Any]
    status: str = "pending"
    fit: FitResult | None = None
    error: str = ""
    kept_epoch: int | None = None

    @property
    def tag(self) -> str:
        return f"select-{self.index}"

    @classmethod
    def diverged(cls, index: int, point: dict[str, Any], e: DivergedError) -> "Candidate":
        log.warning("candidate %s diverged (scored worst): %s", point, e)
        return cls(index, point, "diverged", FitResult(epochs=len(e.history) + 1, best_epoch=0, seconds=e.seconds,
                                                       history=e.history), error=str(e))

    def score(self, metric: str) -> float:
        """Higher is better; a diverged candidate is worst."""
        if self.status != "ok":
            return -math.inf
        return self.fit.val_acc if metric == "acc" else -self.fit.val_loss

    @property
    def result(self) -> FitResult:
        """The fit of the model this candidate keeps: its selection's, or a joint grid's kept epoch."""
        if self.kept_epoch is None:
            return self.fit
        at = next(e for e in self.fit.history if e["epoch"] == self.kept_epoch)
        return dataclasses.replace(self.fit, best_epoch=self.kept_epoch, val_acc=at["val_acc"], val_loss=at["val_loss"])

    def grid_score(self) -> dict[str, Any]:
        """Its entry in ``grid_scores`` (the CSV): its scores, or how it failed."""
        if self.status != "ok":
            return dict(point=self.point, status=self.status, epoch=self.fit.epochs)
        out = dict(point=self.point, status=self.status, val_acc=self.fit.val_acc, val_loss=self.fit.val_loss,
                   best_epoch=self.fit.best_epoch, epochs=self.fit.epochs)
        return out if self.kept_epoch is None else dict(out, kept_epoch=self.kept_epoch)

    def to_json(self) -> dict[str, Any]:
        return _json(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Candidate":
        return cls(**dict(d, fit=FitResult(**d["fit"]) if d.get("fit") else None))


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
    candidate: Candidate | None = None  # the chosen candidate (its index too)

    def record(self) -> dict[str, Any]:
        return dict(
            val_acc=self.val_acc, val_loss=self.val_loss, epochs=self.fit.epochs, best_epoch=self.fit.best_epoch,
            test_acc_max=self.fit.test_acc_max,
            chosen=json.dumps(self.chosen, sort_keys=True), grid_scores=json.dumps(self.grid_scores),
            train_seconds=round(self.train_seconds, 3), eval_seconds=round(self.test.seconds, 3),
        )


def _best(selections: list[Selection], live: list[int]) -> int:
    """The live candidate with the best score so far (ties: the first)."""
    return max(live, key=lambda j: (-math.inf if selections[j].best_score is None else selections[j].best_score, -j))


class GridSelection:
    """Which candidate a joint grid keeps, and when it stops, as the PVeRA code decides it
    (leofillioux/pvera utils/train.py): every candidate trains in lockstep and keeps its own
    ``Selection`` (read here, never copied: each fit's own); after each scored epoch the grid's
    best, the best of the candidates' best scores, moves only when it improves on the grid's
    previous best by more than ``min_rel_delta`` relative to it, and then the candidate holding
    it, with its weights of that epoch, is the one kept (ties: the first); training stops once
    every candidate has stalled. ``update`` says whether the grid's best moved (the chosen
    candidate's weights are the ones to keep)."""

    def __init__(self, candidates: list[Selection], min_rel_delta: float) -> None:
        self.candidates = candidates
        self.min_rel_delta = float(min_rel_delta or 0.0)
        self.live = list(range(len(candidates)))
        self.best_score: float | None = None
        self.chosen: int | None = None
        self.epoch = 0  # of the last move: the kept weights are the chosen candidate's after this epoch

    def update(self, epoch: int) -> bool:
        """Call after every live candidate's selection has scored ``epoch``."""
        i = _best(self.candidates, self.live)
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
            self.chosen = _best(self.candidates, self.live) if self.live else None
            self.best_score = self.candidates[self.chosen].best_score if self.live else None
            self.epoch = self.candidates[self.chosen].best_epoch if self.live else 0

    @property
    def should_stop(self) -> bool:
        return all(self.candidates[i].should_stop for i in self.live)

    def state_dict(self) -> dict[str, Any]:
        return dict(live=self.live, best_score=self.best_score, chosen=self.chosen, epoch=self.epoch)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.live, self.best_score, self.chosen, self.epoch = (list(state["live"]), state["best_score"],
                                                                state["chosen"], state["epoch"])


Build = Callable[[Candidate], Trainer]
Load = Callable[[str], Split]
OnEpoch = Callable[[str, dict], None] | None


def _replay(on_epoch: OnEpoch, tag: str, fit: FitResult | None) -> None:
    """A fit finished in an earlier run: its epochs to ``on_epoch`` (history.csv of the new run)."""
    for entry in fit.history if on_epoch is not None and fit is not None else ():
        on_epoch(tag, entry)


def _all_diverged(cands: list[Candidate]) -> DivergedError:
    last = cands[-1].error
    n = len(cands)
    return DivergedError(last if n == 1 else f"every candidate diverged ({n} of {n}); the last: {last}")


def _fit_options(plan: Plan) -> dict[str, Any]:
    """How a selection fit keeps its epoch and stops (``Trainer.fit``'s select/patience/min_rel_delta)."""
    return dict(select=plan.metric if plan.keeps_best else None, patience=plan.patience,
                min_rel_delta=plan.min_rel_delta)


def separate_grid(plan: Plan, build: Build, load: Load, state: RunState,
                  on_epoch: OnEpoch) -> tuple[list[Candidate], Candidate]:
    """``grid_mode: separate``: each candidate trains alone, stops on its own; the best score
    chooses (ties: the first). Each finished candidate is committed to ``state`` (with its
    weights while it is the best so far, when the chosen model is kept as it is (no ``final_on``))."""
    metric, kw, keep_weights = plan.metric, _fit_options(plan), not plan.retrains
    cands: list[Candidate] = []
    best: Candidate | None = None
    for i, point in enumerate(plan.points):
        rec = state.candidate(i, point)
        if rec is not None:
            c = Candidate.from_json(rec)
            log.info("candidate %s: finished in an earlier run (%s), not trained again", point, c.status)
            _replay(on_epoch, c.tag, c.fit)
        else:
            c = Candidate(i, point)
            trainer = build(c)
            try:
                c.fit = trainer.fit(load(plan.select_on), load(plan.val_split),
                                    desc=f"select {point}" if point else "train",
                                    tag=c.tag, stamp=point, checkpoint=state.fit_path(c.tag), every=state.every, **kw)
                c.status = "ok"
                log.info("candidate %s: val_acc %.2f val_loss %.4f", point, c.fit.val_acc, c.fit.val_loss)
            except DivergedError as e:
                c = Candidate.diverged(i, point, e)
            better = c.status == "ok" and (best is None or c.score(metric) > best.score(metric))
            state.commit_candidate(i, c.to_json(), trainer.trainable_state() if keep_weights and better else None)
            del trainer
        if c.status == "ok" and (best is None or c.score(metric) > best.score(metric)):
            if keep_weights and best is not None:
                state.drop_candidate_weights(best.index)  # only now, once ``c`` is committed
            best = c
        cands.append(c)
    if best is None:
        raise _all_diverged(cands)
    return cands, best


def joint_grid(plan: Plan, build: Build, load: Load, state: RunState,
               on_epoch: OnEpoch) -> tuple[list[Candidate], Candidate]:
    """``grid_mode: joint``: every candidate trains in lockstep and ``GridSelection`` chooses.
    The round is checkpointed as one file (``select-joint.safetensors``: every candidate's fit,
    the grid's state and the kept weights) every ``state.every`` epochs, so candidates always
    resume at the same epoch; the finished grid is committed as one record (``joint-grid.json``,
    with the kept weights when the chosen model is kept as it is), before the round file goes."""
    points, keep_weights, fit_kw = list(plan.points), not plan.retrains, _fit_options(plan)
    done = state.get_json("joint-grid")
    if done is not None and [c["point"] for c in done] == _json(points):
        log.info("joint grid: finished in an earlier run, not trained again")
        cands = [Candidate.from_json(c) for c in done]
        for c in cands:
            _replay(on_epoch, c.tag, c.fit)
        state.drop("select-joint.safetensors")  # killed between the commit and this
        return cands, next(c for c in cands if c.kept_epoch is not None)
    train, val = load(plan.select_on), load(plan.val_split)
    kw = fit_kw

    def start() -> tuple[list, list, GridSelection]:
        trainers = [build(Candidate(i, point)) for i, point in enumerate(points)]
        loops = [t.start(train, val, desc=f"select {point}", tag=f"select-{i}", stamp=point, **kw)
                 for i, (t, point) in enumerate(zip(trainers, points))]
        return trainers, loops, GridSelection([loop.selection for loop in loops], fit_kw["min_rel_delta"])

    trainers, loops, grid = start()
    diverged: dict[int, Candidate] = {}
    kept: dict[str, torch.Tensor] | None = None  # the chosen candidate's weights after grid.epoch
    path = state.fit_path("select-joint")
    saved = checkpoint.load_joint(path) if path else None
    if saved is not None:
        parts, extra, info = saved
        if info.get("points") != _json(points) or sorted(parts) != sorted(info["grid"]["live"]):
            log.warning("discarding checkpoint %s: it was saved for the grid %s, not %s", path, info.get("points"), points)
        elif all(loops[i].restore(parts[i], f"{path} [{i}]") for i in parts):
            grid.load_state_dict(info["grid"])
            diverged = {int(i): Candidate.from_json(c) for i, c in info["diverged"].items()}
            kept = extra or None
        else:  # restore() said why; start every candidate afresh
            trainers, loops, grid = start()
    for i in diverged:
        trainers[i] = loops[i] = None
    while grid.live and not loops[grid.live[0]].finished and not grid.should_stop:
        scored = False
        for i in list(grid.live):
            try:
                scored = "val_acc" in loops[i].step() or scored  # trainer.eval_every > 1: not every epoch
            except DivergedError as e:
                diverged[i] = Candidate.diverged(i, points[i], e)
                was_chosen = grid.chosen == i
                trainers[i] = loops[i] = None
                grid.drop(i)
                if was_chosen:  # the new choice keeps its own best epoch's weights
                    kept = loops[grid.chosen].best_state if grid.live else None
        if not grid.live:
            break
        epoch = loops[grid.live[0]].epoch
        if scored and grid.update(epoch):
            kept = trainers[grid.chosen].trainable_state()
        if path and epoch % state.every == 0 and not loops[grid.live[0]].finished and not grid.should_stop:
            checkpoint.save_joint(path, {i: loops[i].state() for i in grid.live}, kept or {},
                                  dict(points=points, grid=grid.state_dict(),
                                       diverged={i: c.to_json() for i, c in diverged.items()}))
    if not grid.live:
        raise _all_diverged([diverged[i] for i in sorted(diverged)])
    if grid.should_stop:
        log.info("early stopping after epoch %d: every candidate is %s epochs past its best",
                 loops[grid.live[0]].epoch, fit_kw["patience"])
    cands = [diverged[i] if i in diverged else
             Candidate(i, point, "ok", loops[i].close(keep_best=False)) for i, point in enumerate(points)]
    chosen = cands[grid.chosen]
    chosen.kept_epoch = grid.epoch
    if keep_weights:
        state.put_tensors(f"candidate-{chosen.index}", kept)
    state.put_json("joint-grid", [c.to_json() for c in cands])  # the commit: one file, so no half-recorded grid
    state.drop("select-joint.safetensors")
    return cands, chosen


def final_fit(chosen: Candidate, plan: Plan, build: Build, load: Load,
              state: RunState) -> tuple[FitResult, dict[str, torch.Tensor], Split | None]:
    """Retrain the chosen candidate on ``final_on`` (its checkpoint is stamped with the point).
    Returns the fit, the trained weights and the test split when it was scored along the fit."""
    trainer = build(chosen)
    final = load(plan.final_on)
    # every choice is made: the test split may be scored along the final fit
    test_split = load(plan.test_split) if plan.test_eval_every else None
    fit = trainer.fit(final, desc="final", select=None, tag="final", stamp=chosen.point, test=test_split,
                      test_eval_every=plan.test_eval_every, test_eval_at=plan.test_eval_at,
                      test_eval_from=plan.test_eval_from, checkpoint=state.fit_path("final"),
                      every=state.every)
    return fit, trainer.trainable_state(), test_split


def run_protocol(p: Mapping[str, Any], build: Build, load: Load, *, state: RunState | None = None,
                 on_epoch: OnEpoch = None) -> Outcome:
    """Run protocol ``p``: ``build(candidate)`` makes a fresh trainer with the candidate's grid
    values applied; ``load(split)`` opens a split. ``state`` (the run's ``RunState``) keeps what
    is finished; ``on_epoch`` gets the history of fits finished in an earlier run. Returns the
    test predictions of the final model, which is always rebuilt from its committed weights."""
    plan = plan_of(p)
    plan.check()
    state = state if state is not None else RunState(None)
    test_split = None

    committed = state.model()
    if committed is not None:
        info, weights = committed
        cands = [Candidate.from_json(c) for c in info["candidates"]]
        chosen, fit = Candidate.from_json(info["chosen"]), FitResult(**info["fit"])
        log.info("the final model (%s) was saved by an earlier run: not trained again", chosen.point)
        for c in cands:
            _replay(on_epoch, c.tag, c.fit)
        if plan.retrains:
            _replay(on_epoch, "final", fit)
    else:
        if plan.joint:
            cands, chosen = joint_grid(plan, build, load, state, on_epoch)
        elif plan.selects:
            cands, chosen = separate_grid(plan, build, load, state, on_epoch)
        else:  # one point, retrained on final_on: nothing to choose
            cands, chosen = [], Candidate(0, plan.points[0])
        if cands:
            log.info("chosen on %s%s: %s", plan.val_split,
                     f" (joint grid, weights after epoch {chosen.kept_epoch})" if plan.joint else "", chosen.point)
        if plan.retrains:
            fit, weights, test_split = final_fit(chosen, plan, build, load, state)
        else:
            fit, weights = chosen.result, state.candidate_weights(chosen.index)
            if weights is None:
                raise ProtocolError(f"the weights of the chosen candidate {chosen.point} are missing from {state.dir}; "
                                    "delete that directory to run the grid again")
        state.commit_model(dict(chosen=chosen.to_json(), candidates=[c.to_json() for c in cands],
                                fit=_json(dataclasses.asdict(fit))), weights)

    seconds = sum(c.fit.seconds for c in cands) + (fit.seconds if plan.retrains else 0.0)
    trainer = build(chosen)
    trainer.load_trainable_state({k: v.to(trainer.device) for k, v in weights.items()})
    # Every choice is final: now, and only now (or just before the final fit), the test split is opened.
    test = trainer.predict(test_split if test_split is not None else load(plan.test_split), stream=TEST_STREAM)
    val_acc, val_loss = (chosen.result.val_acc, chosen.result.val_loss) if cands else (math.nan, math.nan)
    return Outcome(trainer, test, fit, chosen.point, val_acc, val_loss, [c.grid_score() for c in cands], seconds,
                   candidate=chosen)
