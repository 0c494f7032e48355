"""The protocol plan: what a protocol config means, derived once (no torch, no Hydra).

A protocol (``configs/protocol/*.yaml``, see :mod:`pvera_bench.protocols`) is read here and only
here: :func:`plan_of` turns it into a :class:`Plan` that says what each fit trains on, which
split scores the candidates and how, whether validation chooses the kept model, when the test
split is scored and which options are read at all. Validation (schema), the run's key
(identity), the protocol runner (protocols) and evaluation read the plan; none derives it again.

A grid is expanded here too (:func:`grid_points`, :func:`with_point`): a grid's points are the
plan's candidates.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

# The stream of the final test pass (train.Trainer.predict): training's test pass and evaluate's
# re-scoring must draw the same noise for a stochastic adapter, so both name it from here.
TEST_STREAM = "test"
# A split made of others (data/tasks: train800val200 is train800 followed by val200).
SPLIT_PARTS = {"train800val200": ("train800", "val200")}


class ProtocolError(ValueError):
    """A protocol config that cannot be run (a user error: one message, no traceback)."""


# ---------------------------------------------------------------- grids
def flatten_dotted(grid: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{trainer: {lr_adapter: [...]}}`` -> ``{"trainer.lr_adapter": [...]}``: how a grid's keys are read."""
    out: dict[str, Any] = {}
    for k, v in grid.items():
        if isinstance(v, Mapping):
            out.update(flatten_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def grid_values(grid: Mapping[str, Any] | None) -> dict[str, list]:
    """A grid as ``{dotted key: [values]}`` (a scalar is a one-value list), in the config's order."""
    return {k: [v] if isinstance(v, (str, int, float, bool)) or v is None else list(v)
            for k, v in flatten_dotted(grid or {}).items()}


def grid_points(grid: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in order; one empty point for an empty grid.

    Keys are dotted config keys (``trainer.lr_adapter``); nested mappings are flattened, so
    ``{trainer: {lr_adapter: [...]}}`` means the same."""
    grid = grid_values(grid)
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


def has_key(c: Mapping[str, Any], dotted: str) -> bool:
    node: Any = c
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def with_point(c: Any, point: Mapping[str, Any]) -> Any:
    """A copy of config ``c`` (a DictConfig or a plain dict) with a grid point's values (dotted
    keys) applied; a key the config lacks is left out (validation refuses such a grid)."""
    out = copy.deepcopy(c)
    for key, value in point.items():
        if isinstance(out, DictConfig):
            OmegaConf.update(out, key, value, force_add=False)
        elif has_key(out, key):
            *parents, last = key.split(".")
            node = out
            for part in parents:
                node = node[part]
            node[last] = value
    return out


# ---------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Plan:
    """What protocol ``name`` does. ``points``: the grid's candidates (one empty point without a
    grid). ``selects``: candidates are fitted on ``select_on`` and scored on ``val_split`` (a grid,
    or no ``final_on``); otherwise the one point trains on ``final_on`` directly. ``keeps_best``:
    a selection fit keeps its best epoch (``checkpoint: best``). ``chooses``: validation scores
    choose the kept model (its best epoch, or a grid's point), so whatever changes those scores
    (an adapter's inference mode) shapes the weights. ``retrains``: the chosen point is fitted
    again on ``final_on``. ``joint``: the grid trains in lockstep (``grid_mode: joint``)."""

    name: str | None
    points: tuple[dict[str, Any], ...]
    select_on: str | None
    val_split: str | None
    final_on: str | None
    test_split: str
    metric: str
    checkpoint: str
    grid_mode: str
    patience: int | None
    min_rel_delta: float
    test_eval_every: int
    test_eval_at: str
    test_eval_from: int

    @property
    def selects(self) -> bool:
        return len(self.points) > 1 or not self.final_on

    @property
    def keeps_best(self) -> bool:
        return self.selects and self.checkpoint == "best"

    @property
    def chooses(self) -> bool:
        return self.keeps_best or len(self.points) > 1

    @property
    def retrains(self) -> bool:
        return bool(self.final_on)

    @property
    def joint(self) -> bool:
        return self.grid_mode == "joint" and len(self.points) > 1

    @property
    def fit_splits(self) -> tuple[str, ...]:
        """The splits a model of this run trains on (``select_on`` for candidates, ``final_on``)."""
        return tuple(s for s in ((self.select_on if self.selects else None), self.final_on) if s)

    @property
    def splits_read(self) -> tuple[str, ...]:
        """Every split of the task the run reads, sorted (the data in its key)."""
        selection = (self.select_on, self.val_split) if self.selects else ()
        return tuple(sorted({s for s in (*selection, self.final_on, self.test_split) if s}))

    def trained_on(self, split: str) -> bool:
        """Whether the kept model trained on examples of ``split`` (the final fit's split, or the
        candidates' when nothing is retrained): a temperature fitted there is optimistic."""
        model_split = self.final_on or self.select_on
        return bool(model_split) and bool(set(SPLIT_PARTS.get(split, (split,)))
                                          & set(SPLIT_PARTS.get(model_split, (model_split,))))

    def reads(self, option: str) -> bool:
        """Whether protocol ``option`` changes what the run does (the key leaves the rest out)."""
        return {"select_on": self.selects, "val_split": self.selects, "checkpoint": self.selects,
                "metric": self.chooses, "patience": self.keeps_best, "min_rel_delta": self.keeps_best,
                "grid_mode": len(self.points) > 1}.get(option, True)

    def check(self) -> None:
        """Raise :class:`ProtocolError` for a protocol that cannot run as written."""
        if self.metric not in ("acc", "loss") or self.checkpoint not in ("best", "last"):
            raise ProtocolError(f"protocol {self.name!r}: metric must be acc or loss (got {self.metric!r}) and "
                                f"checkpoint best or last (got {self.checkpoint!r})")
        if self.patience is not None and self.checkpoint != "best":
            raise ProtocolError(f"protocol.patience={self.patience} stops a fit early on its validation score, which "
                                f"checkpoint={self.checkpoint!r} does not keep; set protocol.patience=null or "
                                f"protocol.checkpoint=best")
        if self.test_eval_every and not self.final_on:
            raise ProtocolError(f"protocol.test_eval_every={self.test_eval_every} scores the test split during the "
                                f"final fit, and protocol {self.name!r} has none (final_on is null); set "
                                f"protocol.test_eval_every=0")
        if self.joint and self.checkpoint != "best":
            raise ProtocolError("protocol.grid_mode=joint keeps each candidate's best epoch by its validation score "
                                "and needs checkpoint: best; set protocol.checkpoint=best, or "
                                "protocol.grid_mode=separate")


def plan_of(p: Mapping[str, Any]) -> Plan:
    """The plan of protocol config ``p`` (a plain mapping; absent optional keys take their defaults)."""
    return Plan(name=p.get("name"), points=tuple(grid_points(p.get("grid"))) or ({},), select_on=p.get("select_on"),
                val_split=p.get("val_split"), final_on=p.get("final_on"), test_split=p.get("test_split", "test"),
                metric=p.get("metric", "acc"), checkpoint=p.get("checkpoint", "last"),
                grid_mode=p.get("grid_mode") or "separate", patience=p.get("patience"),
                min_rel_delta=float(p.get("min_rel_delta") or 0.0), test_eval_every=int(p.get("test_eval_every") or 0),
                test_eval_at=p.get("test_eval_at") or "start", test_eval_from=int(p.get("test_eval_from") or 1))


def config_plan(c: Mapping[str, Any]) -> Plan:
    """The plan of a whole resolved config (its ``protocol`` group)."""
    return plan_of(c.get("protocol") or {})
