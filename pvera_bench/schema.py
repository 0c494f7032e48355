"""Every option checked before anything loads: one typed schema per config group.

``validate(cfg)`` runs on the composed config before a model or a split is loaded and raises
:class:`ConfigError` with one line naming the key, the bad value and what is allowed.

- **Adapters**: each adapter declares its options (type, default, bounds, choices, help, "used only
  when") in :mod:`pvera_bench.registry`, torch-free; :func:`adapter_rules` turns them into Rules. An
  option it does not declare is an error; one without a default is required.
  ``tests/test_schema.py`` checks that every ``configs/adapter/*.yaml`` value matches its default.
- **trainer, protocol, data, backbone, runtime**: the dataclasses below. A key that is not a field
  is an error (a typo must not be ignored); a field with ``required=False`` may be absent (a config
  written before that key existed: the code that reads it supplies the default).
- **Combinations** (:func:`check_combinations`): options valid alone that together would do
  nothing or something else than they say (``patience`` without ``checkpoint: best``, a fractional
  ``warmup_epochs`` stepped per epoch, ...).
- **The resume key** (:func:`key_view`): a Rule's ``label`` (a name only) and ``used_when`` (when
  the option is read at all) say what the key leaves out; adapters declare theirs with their
  options (``used_when``).
- **protocol.grid**: every key must exist in the config, every list must be non-empty, every
  point must give a valid config, and a key the adapter ignores (``trainer.lr_adapter`` for an
  adapter without trainable tensors) is an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping

from . import registry

SPLITS = ("train800", "val200", "train800val200", "test")
RESIZE_MODES = ("bilinear_antialias", "bicubic", "bilinear")


class ConfigError(ValueError):
    """An invalid option (a user error: one line, exit code 2)."""


@dataclass(frozen=True)
class Rule:
    """How one option is checked: its type (``int``, ``float``, ``str``, ``bool``, ``list``,
    ``dict``), bounds, choices, whether it may be null and whether it may be absent."""

    type: type | tuple  # a tuple: any of these types (an ``int | str`` annotation)
    ge: float | None = None
    gt: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple | None = None
    nullable: bool = False
    required: bool = True
    length: int | None = None  # lists: exact length
    pattern: str | None = None  # strings: a regular expression the whole value must match ...
    means: str | None = None  # ... and how allowed() describes it
    label: bool = False  # a name only: it changes no number, so the resume key leaves it out (key_view)
    used_when: Callable[[Mapping[str, Any]], bool] | None = field(default=None, compare=False)
    # ^ given the whole resolved config: whether this option is read at all (the key leaves it out otherwise)

    def _each(self) -> list["Rule"]:
        return [Rule(type=t, ge=self.ge, gt=self.gt, lt=self.lt, le=self.le, length=self.length) for t in self.type]

    def allowed(self) -> str:
        if isinstance(self.type, tuple):
            what = " or ".join(r.allowed() for r in self._each()) if self.choices is None else \
                "one of " + ", ".join(map(str, self.choices))
            return what + (" or null" if self.nullable else "")
        if self.means is not None:
            what = self.means
        elif self.choices is not None:
            what = "one of " + ", ".join(map(str, self.choices))
        else:
            what = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                    list: "a list", dict: "a mapping", object: "any value"}[self.type]
            if self.type is list and self.length is not None:
                what = f"a list of {self.length} numbers"
            bounds = [f"{op} {v:g}" for op, v in ((">=", self.ge), (">", self.gt), ("<", self.lt), ("<=", self.le))
                      if v is not None]
            if bounds:
                what += " " + " and ".join(bounds)
        return what + (" or null" if self.nullable else "")

    def ok(self, v: Any) -> bool:
        if v is None:
            return self.nullable
        if isinstance(self.type, tuple):
            return any(r.ok(v) for r in self._each()) and (self.choices is None or v in self.choices)
        if self.type is bool:
            good = isinstance(v, bool)
        elif self.type is int:
            good = isinstance(v, int) and not isinstance(v, bool)
        elif self.type is float:
            good = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
        elif self.type is list:
            good = isinstance(v, (list, tuple)) and (self.length is None or len(v) == self.length) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        elif self.type is object:
            good = True
        else:
            good = isinstance(v, self.type)
        if not good:
            return False
        if self.choices is not None and v not in self.choices:
            return False
        if self.pattern is not None and not re.fullmatch(self.pattern, v):
            return False
        if self.type in (int, float, list):  # a list's bounds hold for each of its numbers
            for x in (v if self.type is list else [v]):
                if (self.ge is not None and x < self.ge) or (self.gt is not None and x <= self.gt):
                    return False
                if (self.lt is not None and x >= self.lt) or (self.le is not None and x > self.le):
                    return False
        return True


def rule(**kw: Any) -> Any:
    """A dataclass field carrying its :class:`Rule` (the field's annotation is for readers)."""
    return field(default=None, metadata={"rule": Rule(**kw)})


# When an option is read at all (``Rule.used_when``, given the whole resolved config): the resume key
# leaves out an option no grid point reads (see key_view).

def _points(c: Mapping[str, Any]) -> int:
    n = 1
    for values in flatten_dotted((c.get("protocol") or {}).get("grid") or {}).values():
        n *= len(values) if isinstance(values, (list, tuple)) else 1
    return n


def selects(c: Mapping[str, Any]) -> bool:
    """Whether the protocol trains candidates on ``select_on`` and scores them on ``val_split``:
    with one grid point and a ``final_on`` split it trains the final model directly."""
    return _points(c) > 1 or not c["protocol"].get("final_on")


def _keeps_best(c: Mapping[str, Any]) -> bool:
    return selects(c) and c["protocol"].get("checkpoint") == "best"


def _warms_up(c: Mapping[str, Any]) -> bool:
    return float(c["trainer"].get("warmup_epochs") or 0) > 0


def _trains_adapter(c: Mapping[str, Any]) -> bool:
    return adapter_trains(c["adapter"]["name"])


@dataclass
class TrainerConfig:
    """``configs/trainer/*.yaml``: what train.Trainer reads."""

    epochs: int = rule(type=int, ge=1)
    batch_size: int = rule(type=int, ge=1)
    lr_head: float = rule(type=float, gt=0)
    lr_adapter: float = rule(type=float, gt=0, used_when=_trains_adapter)
    wd_head: float = rule(type=float, ge=0)
    wd_adapter: float = rule(type=float, ge=0, used_when=_trains_adapter)
    wd_skip_1d: bool = rule(type=bool, required=False)
    warmup_epochs: float = rule(type=float, ge=0)
    warmup_lr: float = rule(type=float, ge=0, required=False, used_when=_warms_up)
    min_lr: float = rule(type=float, ge=0, required=False, used_when=lambda c: c["trainer"].get("schedule") == "cosine")
    schedule: str = rule(type=str, choices=("cosine", "constant"))
    schedule_unit: str = rule(type=str, choices=("epoch", "step"), required=False,
                              used_when=lambda c: c["trainer"].get("schedule") == "cosine" or _warms_up(c))
    # help: after 0-based epoch k the scheduler is stepped to k + this (0: NOAH's step(epoch); 1: SSF's step(epoch + 1))
    schedule_offset: int = rule(type=int, ge=0, required=False, used_when=lambda c: bool(c["trainer"].get("schedule_offset")))
    # help: the last N of `epochs` run at min_lr, after the cosine (timm's --cooldown-epochs: the cosine spans epochs - N)
    cooldown_epochs: int = rule(type=int, ge=0, required=False, used_when=lambda c: bool(c["trainer"].get("cooldown_epochs")))
    label_smoothing: float = rule(type=float, ge=0, lt=1, required=False)
    augment: str = rule(type=str, nullable=True, required=False)  # data/augment.py: e.g. hflip+rand-m9-mstd0.5-inc1
    softmax_before_loss: bool = rule(type=bool, required=False)
    shuffle: bool = rule(type=bool)
    drop_last: bool = rule(type=bool, required=False)
    eval_every: int = rule(type=int, ge=1, used_when=selects)  # the final fit scores no validation split
    precision: str = rule(type=str, choices=("auto", "bf16", "fp32"))


@dataclass
class ProtocolConfig:
    """``configs/protocol/*.yaml``: what protocols.run_protocol reads."""

    name: str = rule(type=str, label=True)
    select_on: str = rule(type=str, choices=SPLITS, used_when=selects)
    val_split: str = rule(type=str, choices=SPLITS, nullable=True, used_when=selects)
    final_on: str = rule(type=str, choices=SPLITS, nullable=True)
    test_split: str = rule(type=str, choices=SPLITS)
    metric: str = rule(type=str, choices=("acc", "loss"), used_when=lambda c: _keeps_best(c) or _points(c) > 1)
    checkpoint: str = rule(type=str, choices=("best", "last"), used_when=selects)
    patience: int = rule(type=int, ge=1, nullable=True, used_when=_keeps_best)
    min_rel_delta: float = rule(type=float, ge=0, used_when=_keeps_best)
    grid: dict = rule(type=dict, required=False)
    grid_mode: str = rule(type=str, choices=("separate", "joint"), required=False, used_when=lambda c: _points(c) > 1)
    test_eval_every: int = rule(type=int, ge=0, required=False)
    test_eval_at: str = rule(type=str, choices=("start", "end"), required=False)
    test_eval_from: int = rule(type=int, ge=1, required=False)


@dataclass
class DataConfig:
    """``configs/data/*.yaml``."""

    source: str = rule(type=str)  # checked against the registered sources in validate()
    dir: str = rule(type=str, nullable=True)
    cache_dir: str = rule(type=str, nullable=True)
    resize: str = rule(type=str, choices=RESIZE_MODES, required=False)
    train_resize: str = rule(type=str, choices=RESIZE_MODES, nullable=True, required=False)  # null: as resize


@dataclass
class BackboneConfig:
    """``configs/backbone/*.yaml``: what backbones.create_backbone reads."""

    name: str = rule(type=str, label=True)
    model: str = rule(type=str)
    pretrained: bool = rule(type=bool)
    checkpoint: str = rule(type=str, nullable=True)  # in the key as its content's hash (run.backbone_fingerprint)
    checkpoint_sha256: str = rule(type=str, nullable=True, required=False)
    random_weights: bool = rule(type=bool, required=False)
    note: str = rule(type=str, nullable=True, required=False, label=True)  # printed under a sweep's summary table
    init_seed: int = rule(type=int, required=False)
    kwargs: dict = rule(type=dict, nullable=True, required=False)
    drop_path_rate: float = rule(type=float, ge=0, lt=1, required=False)
    mean: list = rule(type=list, length=3, nullable=True, required=False)
    std: list = rule(type=list, length=3, gt=0, nullable=True, required=False)
    head_init: str = rule(type=str, choices=("pytorch", "noah", "noah_code"), required=False)  # backbones.Classifier
    pos_embed: str = rule(type=str, choices=("timm", "dinov2_hub"), required=False)
    head_draws: str = rule(type=str, choices=("run", "after_backbone"), required=False)  # run.execute


DEVICE = r"auto|cpu|mps|cuda(:\d+)?"


@dataclass
class RuntimeConfig:
    """``configs/runtime/*.yaml``: how a run executes (run.execute, train.Trainer). Of these, the
    device's type (not its index) and ``compile`` change numbers and are in the resume key
    (run.resume_key); the rest change none."""

    device: str = rule(type=str, pattern=DEVICE, means="auto, cpu, cuda, cuda:N or mps")
    threads: int = rule(type=int, ge=1, nullable=True)
    progress: bool = rule(type=bool)
    eval_batch_size: int = rule(type=int, ge=1)
    compile: bool = rule(type=bool)
    checkpoint_dir: str = rule(type=str, nullable=True)
    checkpoint_every: int = rule(type=int, ge=0)
    save_weights: bool = rule(type=bool, required=False)


GROUPS: dict[str, type] = {"trainer": TrainerConfig, "protocol": ProtocolConfig, "data": DataConfig,
                           "backbone": BackboneConfig, "runtime": RuntimeConfig}

def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, str) else ("null" if v is None else str(v).replace("True", "true").replace("False", "false"))


def _check(key: str, value: Any, r: Rule, what: str = "") -> None:
    if not r.ok(value):
        raise ConfigError(f"{key}={_fmt(value)} is invalid{what}: allowed {r.allowed()}")


def check_group(group: str, values: Mapping[str, Any], schema: type) -> None:
    rules = {f.name: f.metadata["rule"] for f in fields(schema)}
    for k in values:
        if k not in rules:
            raise ConfigError(f"{group}.{k}={_fmt(values[k])} is not a {group} option; "
                              f"allowed keys: {', '.join(rules)}")
    for k, r in rules.items():
        if k not in values:
            if r.required:
                raise ConfigError(f"{group}.{k} is missing; add it ({r.allowed()}) to the {group} config")
            continue
        _check(f"{group}.{k}", values[k], r)


def check_present(group: str, values: Mapping[str, Any], schema: type) -> None:
    """Check only the keys of ``values`` that ``schema`` has (for code called without a whole config,
    such as the Trainer from Python)."""
    for f in fields(schema):
        if f.name in values:
            _check(f"{group}.{f.name}", values[f.name], f.metadata["rule"])


# -- adapters: each declares its options in pvera_bench.registry ------------------------------------

def adapter_rules(name: str) -> dict[str, Rule]:
    """``{option: Rule}`` of adapter ``name``, from its declaration (:mod:`pvera_bench.registry`)."""
    return {k: Rule(type=o.type, ge=o.ge, gt=o.gt, lt=o.lt, le=o.le, choices=o.choices, nullable=o.nullable,
                    required=o.required) for k, o in registry.options(name).items()}


def check_adapter(values: Mapping[str, Any]) -> None:
    name = values.get("name")
    try:
        rules = adapter_rules(name)
    except registry.UnknownAdapterError:
        raise ConfigError(f"adapter.name={_fmt(name)} is invalid: allowed {', '.join(registry.names())}") from None
    except registry.PluginError as e:
        raise ConfigError(str(e)) from None
    for k, r in rules.items():
        if r.required and k not in values:
            raise ConfigError(f"adapter.{k} is missing: adapter {name} needs it ({r.allowed()}); "
                              f"add it to configs/adapter/{name}.yaml or pass adapter.{k}=VALUE")
    for k, v in values.items():
        if k == "name":
            continue
        if k not in rules:
            raise ConfigError(f"adapter.{k}={_fmt(v)} is invalid: adapter {name} takes no option {k!r}; its options: "
                              f"{', '.join(rules) or 'none'}")
        _check(f"adapter.{k}", v, rules[k], f" for adapter {name}")


def adapter_trains(name: str) -> bool:
    """Whether adapter ``name`` adds trainable tensors (its declaration's ``trains``)."""
    return registry.get(name).trains


# Settings that only an adapter with trainable tensors uses.
ADAPTER_TRAINER_KEYS = ("trainer.lr_adapter", "trainer.wd_adapter")


# -- the whole config -----------------------------------------------------------------------------

def _container(cfg: Any) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg


def check_config(c: Mapping[str, Any]) -> None:
    """Every group of the resolved config ``c`` (a plain dict), the grid excepted."""
    for group, schema in GROUPS.items():
        if not isinstance(c.get(group), Mapping):
            raise ConfigError(f"{group} config is missing; choose one with {group}=NAME")
        check_group(group, c[group], schema)
    if not isinstance(c.get("adapter"), Mapping):
        raise ConfigError("adapter config is missing; choose one with adapter=NAME")
    check_adapter(c["adapter"])
    from .data.augment import AugmentError, parse
    from .data.core import available_sources

    try:
        parse(c["trainer"].get("augment"))
    except AugmentError as e:
        raise ConfigError(str(e)) from None
    src = c["data"]["source"]
    if src not in available_sources():
        raise ConfigError(f"data.source={_fmt(src)} is invalid: allowed {', '.join(available_sources())}")
    if "seed" in c:
        _check("seed", c["seed"], Rule(type=int, ge=0))
    if "force" in c:
        _check("force", c["force"], Rule(type=bool))
    if "calibration" in c:  # calibration.CALIBRATIONS (that module imports torch)
        _check("calibration", c["calibration"], Rule(type=str, choices=("none", "temperature")))
    check_combinations(c)


def check_combinations(c: Mapping[str, Any]) -> None:
    """Options valid alone that do nothing, or something else than they say, together."""
    p, t = c["protocol"], c["trainer"]
    if p.get("patience") is not None and p.get("checkpoint") != "best":
        raise ConfigError(f"protocol.patience={_fmt(p['patience'])} stops a fit early on its validation score, which "
                          f"checkpoint={_fmt(p.get('checkpoint'))} does not keep; set protocol.patience=null or "
                          f"protocol.checkpoint=best")
    w = t.get("warmup_epochs")
    if t.get("schedule_unit", "epoch") == "epoch" and isinstance(w, float) and not w.is_integer():
        raise ConfigError(f"trainer.warmup_epochs={w:g} is not a whole number of epochs, and trainer.schedule_unit=epoch "
                          f"steps the learning rate once per epoch; give a whole number or set trainer.schedule_unit=step")
    if int(t.get("cooldown_epochs") or 0) >= int(t.get("epochs") or 0) > 0:
        raise ConfigError(f"trainer.cooldown_epochs={t['cooldown_epochs']} leaves no epoch of the schedule before the "
                          f"cool-down (trainer.epochs={t['epochs']} counts them); lower it or raise trainer.epochs")
    if int(p.get("test_eval_every") or 0) and not p.get("final_on"):
        raise ConfigError(f"protocol.test_eval_every={p['test_eval_every']} scores the test split during the final fit, "
                          f"and protocol {p.get('name')!r} has none (final_on is null); set protocol.test_eval_every=0")
    if p.get("grid_mode") == "joint" and _points(c) > 1 and p.get("checkpoint") != "best":
        raise ConfigError("protocol.grid_mode=joint keeps each candidate's best epoch by its validation score and "
                          "needs protocol.checkpoint=best; set it, or protocol.grid_mode=separate")


def _get(c: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = c
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _set(c: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = c
    for part in parents:
        node = node[part]
    node[last] = value


def flatten_dotted(grid: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{trainer: {lr_adapter: [...]}}`` -> ``{"trainer.lr_adapter": [...]}``: how a grid's keys are
    read, here and by protocols.grid_points (this module imports no torch, so it lives here)."""
    out: dict[str, Any] = {}
    for k, v in grid.items():
        if isinstance(v, Mapping):
            out.update(flatten_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_grid(c: Mapping[str, Any]) -> None:
    import copy

    grid = flatten_dotted(c["protocol"].get("grid") or {})
    if not grid:
        return
    trains = None
    for key, values in grid.items():
        where = f"protocol.grid.{key}"
        exists, _ = _get(c, key)
        if not exists or key.startswith("protocol.") or key == "seed":
            raise ConfigError(f"{where} names no setting a grid can vary: {key} is not a key of this config "
                              f"(grid keys are dotted keys such as trainer.lr_adapter or adapter.r)")
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"{where}={_fmt(values)} is invalid: allowed a non-empty list of values")
        if key in ADAPTER_TRAINER_KEYS:
            trains = adapter_trains(c["adapter"]["name"]) if trains is None else trains
            if not trains:
                raise ConfigError(f"{where}={_fmt(list(values))} is invalid: adapter {c['adapter']['name']} has no "
                                  f"trainable adapter tensors, so {key} changes nothing; grid over other keys")
        for v in values:
            point = copy.deepcopy(dict(c))
            _set(point, key, v)
            try:
                check_config(point)
            except ConfigError as e:
                raise ConfigError(f"{where} value {_fmt(v)}: {e}") from None


def check_per_task(cfg: Any) -> None:
    """A recipe with per-task values (``per_task``: task name -> values its interpolations read,
    e.g. ``configs/recipe/vpetl.yaml``) must have the chosen task; checked before anything resolves."""
    table = cfg.get("per_task") if isinstance(cfg, Mapping) else None
    if not table:
        return
    task = cfg["task"]["name"]
    if task not in table:
        recipe = (cfg.get("recipe") or {}).get("name")
        raise ConfigError(f"recipe={recipe} sets per-task values (learning rate, weight decay, label smoothing, "
                          f"augmentation) for {len(table)} tasks and task {task!r} is not one of them; choose one of "
                          f"{', '.join(sorted(table))}, or another recipe")


def validate(cfg: Any) -> None:
    """Check the composed config (DictConfig or dict); raise :class:`ConfigError` on the first problem."""
    check_per_task(cfg)
    c = _container(cfg)
    check_config(c)
    check_grid(c)


# -- what changes a number: the view of the config the resume key hashes ---------------------------

def adapter_constants(name: str) -> Mapping[str, Any]:
    """Transitional: ``{"OPTIONS_USED_ONLY_WHEN": {option: {other: values}}}`` of adapter ``name``,
    from its declared ``used_when`` (use :func:`pvera_bench.registry.option_used` instead)."""
    return {"OPTIONS_USED_ONLY_WHEN": {k: dict(o.used_when) for k, o in registry.options(name).items() if o.used_when}}


def _point_configs(c: Mapping[str, Any]) -> list[dict]:
    """``c`` with each grid point's values applied (``[c]`` without a grid)."""
    import copy
    import itertools

    grid = {k: v for k, v in flatten_dotted((c.get("protocol") or {}).get("grid") or {}).items()
            if isinstance(v, (list, tuple)) and v}
    out = []
    for values in itertools.product(*grid.values()):
        point = copy.deepcopy(dict(c))
        for k, v in zip(grid, values):
            if _get(point, k)[0]:
                _set(point, k, v)
        out.append(point)
    return out


def _adapter_option_used(option: str, adapter: Mapping[str, Any]) -> bool:
    """Whether adapter ``adapter["name"]`` with these options reads ``option`` (its declared ``used_when``)."""
    return registry.option_used(adapter["name"], option, adapter)


def key_view(c: Mapping[str, Any]) -> dict:
    """The resolved config ``c`` without what changes no number: the options marked ``label``
    (``protocol.name``, ``backbone.name``), the options no grid point reads (a Rule's
    ``used_when``: ``trainer.min_lr`` under ``schedule=constant``, the selection options of a
    protocol that selects nothing, ...) and the adapter options its declaration marks unread
    (``used_when``: PVeRA's ``mc_samples`` unless ``inference=mc``). The groups
    ``trainer``, ``protocol``, ``backbone`` and ``adapter`` are filtered; the rest is copied."""
    import copy

    out = copy.deepcopy(dict(c))
    points = _point_configs(c)
    for group, schema in GROUPS.items():
        if not isinstance(out.get(group), dict):
            continue
        for f in fields(schema):
            r = f.metadata["rule"]
            if f.name in out[group] and (r.label or (r.used_when is not None and not any(r.used_when(p) for p in points))):
                del out[group][f.name]
    if isinstance(out.get("adapter"), dict):
        for k in list(out["adapter"]):
            if k != "name" and not any(_adapter_option_used(k, p["adapter"]) for p in points):
                del out["adapter"][k]
    return out
