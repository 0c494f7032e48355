"""Every option checked before anything loads: one typed schema per config group.

``validate(cfg)`` runs on the composed config before a model or a split is loaded and raises
:class:`ConfigError` with one line naming the key, the bad value and what is allowed.

- **Adapters**: the schema of adapter ``name`` is its registered ``apply()`` signature (the one
  source of truth for its options, their types and defaults): an option it does not take is an
  error, a value must have the annotated type (``Literal[...]`` annotations give the choices),
  and :data:`ADAPTER_OPTION_RULES` bounds options by name (a rank or width is >= 1 whichever
  adapter has it). A new keyword argument of an ``apply()`` is picked up without an edit here;
  ``tests/test_schema.py`` checks that every ``configs/adapter/*.yaml`` value matches its default.
- **trainer, protocol, data, backbone**: the dataclasses below. A key that is not a field is an
  error (a typo must not be ignored); a field with ``required=False`` may be absent (a config
  written before that key existed: the code that reads it supplies the default).
- **protocol.grid**: every key must exist in the config, every list must be non-empty, every
  point must give a valid config, and a key the adapter ignores (``trainer.lr_adapter`` for an
  adapter without trainable tensors) is an error.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping

SPLITS = ("train800", "val200", "train800val200", "test")
RESIZE_MODES = ("bilinear_antialias", "bicubic", "bilinear")


class ConfigError(ValueError):
    """An invalid option (a user error: one line, exit code 2)."""


@dataclass(frozen=True)
class Rule:
    """How one option is checked: its type (``int``, ``float``, ``str``, ``bool``, ``list``,
    ``dict``), bounds, choices, whether it may be null and whether it may be absent."""

    type: type
    ge: float | None = None
    gt: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple | None = None
    nullable: bool = False
    required: bool = True
    length: int | None = None  # lists: exact length

    def allowed(self) -> str:
        if self.choices is not None:
            what = "one of " + ", ".join(map(str, self.choices))
        else:
            what = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                    list: "a list", dict: "a mapping"}[self.type]
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
        if self.type is bool:
            good = isinstance(v, bool)
        elif self.type is int:
            good = isinstance(v, int) and not isinstance(v, bool)
        elif self.type is float:
            good = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
        elif self.type is list:
            good = isinstance(v, (list, tuple)) and (self.length is None or len(v) == self.length) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        else:
            good = isinstance(v, self.type)
        if not good:
            return False
        if self.choices is not None and v not in self.choices:
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


@dataclass
class TrainerConfig:
    """``configs/trainer/*.yaml``: what train.Trainer reads."""

    epochs: int = rule(type=int, ge=1)
    batch_size: int = rule(type=int, ge=1)
    lr_head: float = rule(type=float, gt=0)
    lr_adapter: float = rule(type=float, gt=0)
    wd_head: float = rule(type=float, ge=0)
    wd_adapter: float = rule(type=float, ge=0)
    wd_skip_1d: bool = rule(type=bool, required=False)
    warmup_epochs: float = rule(type=float, ge=0)
    warmup_lr: float = rule(type=float, ge=0, required=False)
    min_lr: float = rule(type=float, ge=0, required=False)
    schedule: str = rule(type=str, choices=("cosine", "constant"))
    schedule_unit: str = rule(type=str, choices=("epoch", "step"), required=False)
    label_smoothing: float = rule(type=float, ge=0, lt=1, required=False)
    softmax_before_loss: bool = rule(type=bool, required=False)
    shuffle: bool = rule(type=bool)
    drop_last: bool = rule(type=bool, required=False)
    eval_every: int = rule(type=int, ge=1)
    precision: str = rule(type=str, choices=("auto", "bf16", "fp32"))


@dataclass
class ProtocolConfig:
    """``configs/protocol/*.yaml``: what protocols.run_protocol reads."""

    name: str = rule(type=str)
    select_on: str = rule(type=str, choices=SPLITS)
    val_split: str = rule(type=str, choices=SPLITS, nullable=True)
    final_on: str = rule(type=str, choices=SPLITS, nullable=True)
    test_split: str = rule(type=str, choices=SPLITS)
    metric: str = rule(type=str, choices=("acc", "loss"))
    checkpoint: str = rule(type=str, choices=("best", "last"))
    patience: int = rule(type=int, ge=1, nullable=True)
    min_rel_delta: float = rule(type=float, ge=0)
    grid: dict = rule(type=dict, required=False)
    grid_mode: str = rule(type=str, choices=("separate", "joint"), required=False)
    test_eval_every: int = rule(type=int, ge=0, required=False)


@dataclass
class DataConfig:
    """``configs/data/*.yaml``."""

    source: str = rule(type=str)  # checked against the registered sources in validate()
    dir: str = rule(type=str, nullable=True)
    cache_dir: str = rule(type=str, nullable=True)
    resize: str = rule(type=str, choices=RESIZE_MODES, required=False)


@dataclass
class BackboneConfig:
    """``configs/backbone/*.yaml``: what backbones.create_backbone reads."""

    name: str = rule(type=str)
    model: str = rule(type=str)
    pretrained: bool = rule(type=bool)
    checkpoint: str = rule(type=str, nullable=True)
    checkpoint_sha256: str = rule(type=str, nullable=True, required=False)
    random_weights: bool = rule(type=bool, required=False)
    note: str = rule(type=str, nullable=True, required=False)  # printed under a sweep's summary table
    init_seed: int = rule(type=int, required=False)
    kwargs: dict = rule(type=dict, nullable=True, required=False)
    drop_path_rate: float = rule(type=float, ge=0, lt=1, required=False)
    mean: list = rule(type=list, length=3, nullable=True, required=False)
    std: list = rule(type=list, length=3, gt=0, nullable=True, required=False)


GROUPS: dict[str, type] = {"trainer": TrainerConfig, "protocol": ProtocolConfig, "data": DataConfig,
                           "backbone": BackboneConfig}

# Bounds of adapter options by name, whichever adapter takes them (types come from apply()).
ADAPTER_OPTION_RULES: dict[str, dict[str, Any]] = {
    "r": dict(ge=1), "width": dict(ge=1), "mc_samples": dict(ge=1), "beta": dict(gt=0),
    "alpha": dict(gt=0), "projection_seed": dict(ge=0), "dropout": dict(ge=0, lt=1),
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


# -- adapters: the schema is the apply() signature -------------------------------------------------

def _annotation_rule(name: str, ann: Any, default: Any) -> Rule:
    bounds = ADAPTER_OPTION_RULES.get(name, {})
    nullable = default is None
    args = typing.get_args(ann)
    if typing.get_origin(ann) is typing.Union or type(ann).__name__ == "UnionType":
        nullable = nullable or type(None) in args
        rest = [a for a in args if a is not type(None)]
        ann = rest[0] if len(rest) == 1 else ann
        args = typing.get_args(ann)
    if typing.get_origin(ann) is typing.Literal:
        return Rule(type=type(args[0]), choices=tuple(args), nullable=nullable)
    if ann in (int, float, str, bool):
        return Rule(type=ann, nullable=nullable, **bounds)
    if (ann is inspect.Parameter.empty or isinstance(ann, str)) and default is not None:  # the default's type
        t = float if isinstance(default, float) else type(default)
        return Rule(type=t, nullable=nullable, **(bounds if t in (int, float) else {}))
    return Rule(type=object, nullable=True)


def adapter_schema(fn: Callable[..., Any]) -> dict[str, tuple[Rule, Any]]:
    """``{option: (Rule, default)}`` from an adapter's ``apply(model, **options)`` signature."""
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to the defaults' types
        hints = {}
    out = {}
    for i, (name, p) in enumerate(sig.parameters.items()):
        if i == 0 or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = None if p.default is p.empty else p.default
        out[name] = (_annotation_rule(name, hints.get(name, p.annotation), default), default)
    return out


def _choice_note(name: str, constants: Mapping[str, Any]) -> tuple | None:
    """The allowed values an adapter module names for a string option: ``INFERENCE_MODES`` (or
    ``INFERENCE_CHOICES``) for ``inference``; a ``Literal`` annotation says it more directly."""
    for attr in (f"{name.upper()}_MODES", f"{name.upper()}_CHOICES"):
        v = constants.get(attr)
        if isinstance(v, (tuple, list, frozenset, set)) and v and all(isinstance(x, str) for x in v):
            return tuple(v)
    return None


def check_adapter(values: Mapping[str, Any]) -> None:
    static = static_adapter_schemas()
    name = values.get("name")
    if name in static:  # read from the source: no torch import, so a bad option fails in seconds
        schema, constants = static[name]
    else:  # an adapter whose apply() the reader cannot follow: import it
        from . import adapters

        if name not in adapters.available():
            raise ConfigError(f"adapter.name={_fmt(name)} is invalid: allowed {', '.join(adapters.available())}")
        fn = adapters.get(name)
        schema, constants = adapter_schema(fn), vars(inspect.getmodule(fn))
    for k, v in values.items():
        if k == "name":
            continue
        if k not in schema:
            raise ConfigError(f"adapter.{k}={_fmt(v)} is invalid: adapter {name} takes no option {k!r}; its options: "
                              f"{', '.join(schema) or 'none'}")
        r = schema[k][0]
        if r.type is str and r.choices is None:
            choices = _choice_note(k, constants)
            if choices:
                r = Rule(type=str, choices=choices, nullable=r.nullable)
        _check(f"adapter.{k}", v, r, f" for adapter {name}")


_STATIC: dict[str, tuple[dict[str, tuple[Rule, Any]], dict[str, Any]]] | None = None
_EMPTY_BODY: dict[str, bool] = {}  # adapter name -> its apply() does nothing (inserts no tensors)


def static_adapter_schemas() -> dict[str, tuple[dict[str, tuple[Rule, Any]], dict[str, Any]]]:
    """``{name: (adapter_schema, module constants)}`` read with ``ast`` from the ``apply()`` functions
    decorated ``@register("name")`` in ``pvera_bench/adapters/*.py``, the same signatures
    :func:`adapter_schema` reads from the imported functions (a test checks both agree), without
    importing torch. Adapters whose signature is not plain literals are left out (imported then)."""
    global _STATIC
    if _STATIC is None:
        import ast
        from pathlib import Path

        _STATIC = {}
        for path in sorted((Path(__file__).parent / "adapters").glob("*.py")):
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (OSError, SyntaxError):
                continue
            constants = {}
            for node in tree.body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    try:
                        constants[node.targets[0].id] = ast.literal_eval(node.value)
                    except ValueError:
                        pass
            for node in tree.body:
                if not isinstance(node, ast.FunctionDef):
                    continue
                for dec in node.decorator_list:
                    if (isinstance(dec, ast.Call) and getattr(dec.func, "id", None) == "register" and dec.args
                            and isinstance(dec.args[0], ast.Constant)):
                        parsed = _static_signature(node)
                        if parsed is not None:
                            _STATIC[str(dec.args[0].value)] = (parsed, constants)
                            _EMPTY_BODY[str(dec.args[0].value)] = all(
                                isinstance(st, ast.Pass) or (isinstance(st, ast.Expr) and isinstance(st.value, ast.Constant))
                                for st in node.body)
    return _STATIC


_NAMES = {"int": int, "float": float, "str": str, "bool": bool}


def _static_annotation(node: Any) -> Any:
    import ast

    if node is None:
        return inspect.Parameter.empty
    if isinstance(node, ast.Name) and node.id in _NAMES:
        return _NAMES[node.id]
    if isinstance(node, ast.Constant) and node.value is None:
        return type(None)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return typing.Optional[_static_annotation(node.left if not _is_none(node.left) else node.right)]
    if isinstance(node, ast.Subscript) and getattr(node.value, "id", getattr(node.value, "attr", None)) == "Literal":
        return typing.Literal[ast.literal_eval(node.slice)]
    raise ValueError("unsupported annotation")


def _is_none(node: Any) -> bool:
    import ast

    return isinstance(node, ast.Constant) and node.value is None


def _static_signature(fn: Any) -> dict[str, tuple[Rule, Any]] | None:
    import ast

    args = fn.args
    if args.posonlyargs or args.kwonlyargs or args.vararg or args.kwarg:
        return None
    params = args.args[1:]
    defaults = [None] * (len(args.args) - len(args.defaults)) + list(args.defaults)
    out = {}
    try:
        for p, d in zip(params, defaults[1:]):
            default = None if d is None else ast.literal_eval(d)
            out[p.arg] = (_annotation_rule(p.arg, _static_annotation(p.annotation), default), default)
    except ValueError:
        return None
    return out


def trains_adapter_tensors(name: str) -> bool:
    """Whether adapter ``name`` (default options) adds trainable tensors: probed on a one-block,
    8-wide ViT (milliseconds, nothing downloaded), so no adapter has to declare it."""
    from timm.models.vision_transformer import VisionTransformer

    from . import adapters

    vit = VisionTransformer(img_size=8, patch_size=8, embed_dim=8, depth=1, num_heads=1, num_classes=0)
    defaults = {k: d for k, (_, d) in adapter_schema(adapters.get(name)).items() if d is not None}
    try:
        adapters.apply(vit, name, **defaults)
    except Exception:  # noqa: BLE001 - an adapter that cannot be probed this small: assume it trains
        return True
    return adapters.count_trainable(vit) > 0


def adapter_trains(name: str) -> bool:
    """Whether adapter ``name`` adds trainable tensors: an ``apply()`` whose body is only a
    docstring or ``pass`` inserts nothing (read from the source, see static_adapter_schemas);
    otherwise probed with :func:`trains_adapter_tensors` (a test checks both agree)."""
    static_adapter_schemas()
    if name in _EMPTY_BODY:
        return not _EMPTY_BODY[name]
    return trains_adapter_tensors(name)


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
    from .data.core import available_sources

    src = c["data"]["source"]
    if src not in available_sources():
        raise ConfigError(f"data.source={_fmt(src)} is invalid: allowed {', '.join(available_sources())}")
    if "seed" in c:
        _check("seed", c["seed"], Rule(type=int, ge=0))
    if "force" in c:
        _check("force", c["force"], Rule(type=bool))


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


def validate(cfg: Any) -> None:
    """Check the composed config (DictConfig or dict); raise :class:`ConfigError` on the first problem."""
    c = _container(cfg)
    check_config(c)
    check_grid(c)
