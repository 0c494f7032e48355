"""Every option checked before anything loads: one typed schema per config group.

``validate(cfg)`` runs on the composed config before a model or a split is loaded and raises
:class:`ConfigError` with one line naming the key, the bad value and what is allowed.

- **Adapters**: each adapter declares its options (type, default, bounds, choices, help, when it is
  read) in a torch-free declaration read through :mod:`pvera_bench.registry` (the built-in ones in
  ``pvera_bench/specs/``, plugins' through their entry points); :func:`adapter_rules` turns them into
  Rules. ``tests/test_schema.py`` checks that every ``configs/adapter/*.yaml`` value matches its default.
- **trainer, protocol, data, backbone, runtime**: the dataclasses below. A key that is not a field
  is an error (a typo must not be ignored); a field with ``required=False`` may be absent (a config
  written before that key existed: the code that reads it supplies the default).
- **Combinations** (:func:`check_combinations`): options valid alone that together would do
  nothing or something else than they say: the protocol's are the plan's refusals
  (``plan.Plan.check``: ``patience`` without ``checkpoint: best``, ...); a fractional
  ``warmup_epochs`` stepped per epoch.
- **The resume key** (``identity.key_view``): a Rule's ``label`` (a name only) and ``used_when``
  (when the option is read at all; the protocol's options ask the plan, ``Plan.reads``) say what
  the key leaves out; adapters declare theirs with their options (``used_when``). A Rule's ``help`` is
  its one line for a reader.
- **protocol.grid**: every key must exist in the config, every list must be non-empty, every
  point must give a valid config, and a key the adapter ignores (``trainer.lr_adapter`` for an
  adapter without trainable tensors) is an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping

from . import registry
from .plan import ProtocolError, config_plan, flatten_dotted, has_key, with_point

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
    label: bool = False  # a name only: it changes no number, so the resume key leaves it out (identity.key_view)
    used_when: Callable[[Mapping[str, Any]], bool] | None = field(default=None, compare=False)
    # ^ given the whole resolved config: whether this option is read at all (the key leaves it out otherwise)
    help: str = field(default="", compare=False)  # one line for a reader (the docs' reference is made of these)

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
# leaves out an option no grid point reads (identity.key_view). The protocol's are the plan's.

def _read_by_plan(option: str) -> Callable[[Mapping[str, Any]], bool]:
    return lambda c: config_plan(c).reads(option)


def _selects(c: Mapping[str, Any]) -> bool:
    return config_plan(c).selects


def _warms_up(c: Mapping[str, Any]) -> bool:
    return float(c["trainer"].get("warmup_epochs") or 0) > 0


def _cosine(c: Mapping[str, Any]) -> bool:
    return c["trainer"].get("schedule") == "cosine"


def _trains_adapter(c: Mapping[str, Any]) -> bool:
    return adapter_trains(c["adapter"]["name"])


@dataclass
class TrainerConfig:
    """``configs/trainer/*.yaml``: what train.Trainer reads."""

    epochs: int = rule(type=int, ge=1, help="epochs of every fit (selection and final)")
    batch_size: int = rule(type=int, ge=1, help="training batch size")
    lr_head: float = rule(type=float, gt=0, help="AdamW learning rate of the classifier head")
    lr_adapter: float = rule(type=float, gt=0, used_when=_trains_adapter,
                             help="AdamW learning rate of the adapter's tensors")
    wd_head: float = rule(type=float, ge=0, help="weight decay of the head")
    wd_adapter: float = rule(type=float, ge=0, used_when=_trains_adapter, help="weight decay of the adapter's tensors")
    wd_skip_1d: bool = rule(type=bool, required=False,
                            help="true: no weight decay on biases and 1-D tensors (timm's create_optimizer rule)")
    warmup_epochs: float = rule(type=float, ge=0, help="epochs of linear warm-up from warmup_lr")
    warmup_lr: float = rule(type=float, ge=0, required=False, used_when=_warms_up,
                            help="absolute learning rate the warm-up starts from")
    min_lr: float = rule(type=float, ge=0, required=False, used_when=_cosine, help="absolute floor of the cosine schedule")
    schedule: str = rule(type=str, choices=("cosine", "constant"),
                         help="learning-rate schedule after the warm-up: cosine decay or constant")
    schedule_unit: str = rule(type=str, choices=("epoch", "step"), required=False,
                              used_when=lambda c: _cosine(c) or _warms_up(c),
                              help="step the schedule once per epoch or once per optimiser step")
    schedule_offset: int = rule(
        type=int, ge=0, required=False, used_when=lambda c: bool(c["trainer"].get("schedule_offset")),
        help="after 0-based epoch k the scheduler is stepped to k + this (0: NOAH's step(epoch); 1: SSF's step(epoch + 1))")
    cooldown_epochs: int = rule(
        type=int, ge=0, required=False, used_when=lambda c: bool(c["trainer"].get("cooldown_epochs")),
        help="the last N of epochs run at min_lr, after the cosine (timm's --cooldown-epochs: the cosine spans epochs - N)")
    label_smoothing: float = rule(type=float, ge=0, lt=1, required=False,
                                  help="label smoothing of the training cross-entropy")
    augment: str = rule(
        type=str, nullable=True, required=False,
        help="training-batch augmentation, e.g. hflip+rand-m9-mstd0.5-inc1 (data/augment.py); null: none")
    softmax_before_loss: bool = rule(type=bool, required=False,
                                     help="true reproduces a defect of the PVeRA code (softmax, then cross-entropy)")
    shuffle: bool = rule(type=bool, help="shuffle the training split every epoch")
    drop_last: bool = rule(type=bool, required=False, help="true: leave out each epoch's last incomplete batch")
    eval_every: int = rule(
        type=int, ge=1, used_when=_selects,
        help="score the validation split every N epochs of a selection fit (a final fit scores none)")
    precision: str = rule(type=str, choices=("auto", "bf16", "fp32"),
                          help="auto (bf16 autocast on CUDA, fp32 on CPU), bf16 or fp32")


@dataclass
class ProtocolConfig:
    """``configs/protocol/*.yaml``: what protocols.run_protocol reads."""

    name: str = rule(type=str, label=True, help="the protocol's name (a label: not in the key)")
    select_on: str = rule(type=str, choices=SPLITS, used_when=_read_by_plan("select_on"),
                          help="the split candidates train on while choosing")
    val_split: str = rule(type=str, choices=SPLITS, nullable=True, used_when=_read_by_plan("val_split"),
                          help="the split that scores the candidates (and fits a temperature)")
    final_on: str = rule(type=str, choices=SPLITS, nullable=True,
                         help="the split the chosen candidate is retrained on; null: keep the chosen model")
    test_split: str = rule(type=str, choices=SPLITS, help="the split scored once, after every choice")
    metric: str = rule(type=str, choices=("acc", "loss"), used_when=_read_by_plan("metric"),
                       help="what chooses: validation accuracy (acc) or cross-entropy (loss)")
    checkpoint: str = rule(type=str, choices=("best", "last"), used_when=_read_by_plan("checkpoint"),
                           help="keep the weights after the last epoch or of the best-scoring epoch")
    patience: int = rule(type=int, ge=1, nullable=True, used_when=_read_by_plan("patience"),
                         help="with checkpoint best: stop a fit this many scored epochs after its best; null: never")
    min_rel_delta: float = rule(type=float, ge=0, used_when=_read_by_plan("min_rel_delta"),
                                help="with checkpoint best: the relative gain a new best must exceed")
    grid: dict = rule(type=dict, required=False, help="{dotted.key: [values]}: every combination is one candidate")
    grid_mode: str = rule(type=str, choices=("separate", "joint"), required=False, used_when=_read_by_plan("grid_mode"),
                          help="separate (each candidate alone) or joint (lockstep, the PVeRA code's rule)")
    test_eval_every: int = rule(type=int, ge=0, required=False,
                                help="N > 0: also score the test split every N epochs of the final fit (history only)")
    test_eval_at: str = rule(type=str, choices=("start", "end"), required=False,
                             help="which epochs test_eval_every scores: start (1, N+1, ...) or end (N, 2N, ...)")
    test_eval_from: int = rule(type=int, ge=1, required=False, help="the first epoch test_eval_every may score")


@dataclass
class DataConfig:
    """``configs/data/*.yaml``."""

    source: str = rule(type=str, help="where splits are read from: tfds or folder (the demo reads its bundled digits)")
    dir: str = rule(type=str, nullable=True, help="the TFDS data_dir, or the root of the vtab-1k folder copy")
    cache_dir: str = rule(type=str, nullable=True, help="where decoded uint8 images are cached; null: decode every run")
    resize: str = rule(type=str, choices=RESIZE_MODES, required=False,
                       help="how images are resized to the backbone's input")
    train_resize: str = rule(type=str, choices=RESIZE_MODES, nullable=True, required=False,
                             help="the resize of the splits a model trains on; null: as resize")


@dataclass
class BackboneConfig:
    """``configs/backbone/*.yaml``: what backbones.create_backbone reads."""

    name: str = rule(type=str, label=True, help="the backbone's name (a label: not in the key)")
    model: str = rule(type=str, help="the timm model name")
    pretrained: bool = rule(type=bool, help="load timm's pretrained weights from the Hugging Face Hub")
    checkpoint: str = rule(
        type=str, nullable=True,
        help="a local weights file (package:REL inside the package), in the key by its content; null: none")
    checkpoint_sha256: str = rule(type=str, nullable=True, required=False,
                                  help="the expected sha256 of checkpoint; null: not checked")
    random_weights: bool = rule(type=bool, required=False,
                                help="true: the weights are random (numbers only show that the tool works)")
    note: str = rule(type=str, nullable=True, required=False, label=True,
                     help="a note printed under a sweep's summary table (a label: not in the key)")
    init_seed: int = rule(type=int, required=False,
                          help="the seed the backbone is created under (default: the run's seed)")
    kwargs: dict = rule(type=dict, nullable=True, required=False, help="extra keyword arguments of timm.create_model")
    drop_path_rate: float = rule(type=float, ge=0, lt=1, required=False,
                                 help="stochastic depth in training (timm: rising linearly to this in the last block)")
    mean: list = rule(type=list, length=3, nullable=True, required=False,
                      help="input normalisation mean, 3 numbers on the 0-1 scale; null: the weights' own")
    std: list = rule(type=list, length=3, gt=0, nullable=True, required=False,
                     help="input normalisation std, 3 numbers on the 0-1 scale; null: the weights' own")
    head_init: str = rule(type=str, choices=("pytorch", "noah", "noah_code"), required=False,
                          help="the head's init: pytorch (nn.Linear's), noah (trunc-normal std 0.02, bias 0), noah_code (NOAH's draws)")
    pos_embed: str = rule(
        type=str, choices=("timm", "dinov2_hub"), required=False,
        help="position embeddings: timm (resampled once) or dinov2_hub (from the native grid each forward)")
    head_draws: str = rule(type=str, choices=("run", "after_backbone"), required=False,
                           help="run (head drawn after the adapter) or after_backbone (the PVeRA code's j-th head)")


DEVICE = r"auto|cpu|mps|cuda(:\d+)?"


@dataclass
class RuntimeConfig:
    """``configs/runtime/*.yaml``: how a run executes (run.execute, assemble, train.Trainer). Of these, the
    device's type (not its index) and ``compile`` change numbers and are in the resume key
    (identity.resume_key); the rest change none."""

    device: str = rule(type=str, pattern=DEVICE, means="auto, cpu, cuda, cuda:N or mps",
                       help="auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps")
    threads: int = rule(
        type=int, ge=1, nullable=True,
        help="torch CPU threads; null: SLURM_CPUS_PER_TASK, else OMP_NUM_THREADS, else the affinity mask")
    progress: bool = rule(type=bool, help="show tqdm progress bars")
    eval_batch_size: int = rule(type=int, ge=1, help="batch size of evaluation passes")
    compile: bool = rule(type=bool, help="torch.compile the model (eager when compilation fails)")
    checkpoint_dir: str = rule(type=str, nullable=True,
                               help="where a run's state lives until its row is appended; null: in memory only")
    checkpoint_every: int = rule(type=int, ge=0, help="epochs between a fit's checkpoints; 0: never")
    save_weights: bool = rule(type=bool, required=False,
                              help="write the trained adapter and head to adapter.safetensors in the run directory")


GROUPS: dict[str, type] = {"trainer": TrainerConfig, "protocol": ProtocolConfig, "data": DataConfig,
                           "backbone": BackboneConfig, "runtime": RuntimeConfig}

# Bounds of adapter options by name, whichever adapter takes them (types come from apply()).
ADAPTER_OPTION_RULES: dict[str, dict[str, Any]] = {
    "r": dict(ge=1), "width": dict(ge=1), "mc_samples": dict(ge=1), "beta": dict(gt=0),
    "alpha": dict(gt=0), "projection_seed": dict(ge=0), "dropout": dict(ge=0, lt=1), "length": dict(ge=1),
}


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
                    required=o.required, help=o.help) for k, o in registry.options(name).items()}


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
        _check("seed", c["seed"], Rule(type=int, ge=0, help="the run's seed"))
    if "force" in c:
        _check("force", c["force"], Rule(type=bool, help="true: train again even if the CSV has an ok row"))
    if "calibration" in c:  # calibration.CALIBRATIONS (that module imports torch)
        _check("calibration", c["calibration"], Rule(type=str, choices=("none", "temperature"),
                                                     help="post-hoc calibration of the test probabilities"))
    check_combinations(c)


def check_combinations(c: Mapping[str, Any]) -> None:
    """Options valid alone that do nothing, or something else than they say, together."""
    t = c["trainer"]
    try:
        config_plan(c).check()
    except ProtocolError as e:
        raise ConfigError(str(e)) from None
    w = t.get("warmup_epochs")
    if t.get("schedule_unit", "epoch") == "epoch" and isinstance(w, float) and not w.is_integer():
        raise ConfigError(f"trainer.warmup_epochs={w:g} is not a whole number of epochs, and trainer.schedule_unit=epoch "
                          f"steps the learning rate once per epoch; give a whole number or set trainer.schedule_unit=step")
    if int(t.get("cooldown_epochs") or 0) >= int(t.get("epochs") or 0) > 0:
        raise ConfigError(f"trainer.cooldown_epochs={t['cooldown_epochs']} leaves no epoch of the schedule before the "
                          f"cool-down (trainer.epochs={t['epochs']} counts them); lower it or raise trainer.epochs")


def check_grid(c: Mapping[str, Any]) -> None:
    grid = flatten_dotted(c["protocol"].get("grid") or {})
    if not grid:
        return
    trains = None
    for key, values in grid.items():
        where = f"protocol.grid.{key}"
        if not has_key(c, key) or key.startswith("protocol.") or key == "seed":
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
            point = with_point(dict(c), {key: v})
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
