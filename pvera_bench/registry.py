"""Every adapter's declaration, built-in or from another package: the public extension API.

This module imports no torch, so validation reads it before anything heavy loads. An adapter is
declared once, with :func:`declare`, in a module that imports no torch either:

    from dataclasses import dataclass
    from pvera_bench.registry import Adapter, declare, option

    @dataclass(frozen=True)
    class LoraOptions:                       # PEFT's per-method config dataclasses are the model
        r: int = option(8, ge=1, help="rank of the update B A")
        targets: str = option("qv", choices=("qv", "qkv"), help="which of q, k, v are adapted")

    declare(Adapter("lora", LoraOptions, apply="pvera_bench.adapters.lora:apply",
                    help="low-rank updates of q and v (Hu et al. 2021)"))

- **Options** are the fields of a frozen dataclass: the annotation is the type (``int``,
  ``float``, ``str``, ``bool``, ``X | None`` for a nullable one, ``int | str`` for either),
  :func:`option` gives the default (none: the config must set it), bounds (``ge``, ``gt``, ``lt``,
  ``le``), ``choices``, a one-line ``help`` and ``used_when`` (``{"inference": ("mc",)}``: the
  option is read only under those values of other options, so the resume key leaves it out
  otherwise). ``pvera_bench.schema`` checks ``adapter.X=...`` against them.
- **apply** names ``"module:function"``, imported only when a model is built:
  ``function(model, **options)`` inserts the adapter's layers into a timm ViT (every option given,
  defaults filled in). The layers (``pvera_bench.adapters.base.AdapterLayer`` subclasses) declare
  their vector parameters (``vector_params``) and whether they merge (``mergeable``).
- **trains**: whether the adapter adds trainable tensors (``trainer.lr_adapter`` is read).
- **no_peft_form**: why ``pvera-bench export --format peft`` refuses it (one line); ``None`` for an
  adapter whose PEFT form is registered with ``pvera_bench.export.peft_exporter``.

Built-in adapters are declared in ``pvera_bench/specs/<name>.py``. Other packages declare theirs
in a module named by an entry point of group ``pvera_bench.adapters`` (see
``docs/guides/add-your-method.md``); that module may also add a folder of Hydra configs
(:func:`add_configs`: ``adapter/<name>.yaml``, recipe values) and of published reference rows
(:func:`add_references`). :func:`load` imports them all, once, the first time a name is looked up
(with ``PVERA_BENCH_PLUGINS=0`` in the environment, the built-in ones only).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import pkgutil
import typing
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Mapping

from . import specs  # the package of built-in declarations (torch-free; imported one by one by load())

__all__ = ["Adapter", "OptionSpec", "option", "declare", "add_configs", "add_references", "get", "names",
           "options", "defaults", "option_used", "apply_function", "config_dirs", "reference_dirs", "load",
           "ENTRY_POINT_GROUP", "PLUGINS_ENV", "UnknownAdapterError", "PluginError"]

ENTRY_POINT_GROUP = "pvera_bench.adapters"
PLUGINS_ENV = "PVERA_BENCH_PLUGINS"  # set to 0: installed plugin packages are not loaded (the built-ins only)
REQUIRED: Any = dataclasses.MISSING  # an option without a default: the config must give it


class UnknownAdapterError(ValueError):
    """A name no installed package declares."""


class PluginError(ValueError):
    """A plugin package that fails to import or declares a name that exists (one line, names the package)."""


@dataclass(frozen=True)
class OptionSpec:
    """One option of an adapter, as validation, the resume key and the docs read it."""

    name: str
    type: type | tuple  # a tuple: any of these types
    default: Any
    help: str
    nullable: bool = False
    ge: float | None = None
    gt: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple | None = None
    used_when: Mapping[str, tuple] | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def option(default: Any = REQUIRED, *, help: str, ge: float | None = None, gt: float | None = None,
           lt: float | None = None, le: float | None = None, choices: tuple | None = None,
           used_when: Mapping[str, tuple] | None = None) -> Any:
    """A field of an options dataclass (see the module docstring)."""
    meta = dict(help=help, ge=ge, gt=gt, lt=lt, le=le, choices=tuple(choices) if choices is not None else None,
                used_when={k: tuple(v) for k, v in used_when.items()} if used_when else None)
    if default is REQUIRED:
        return dataclasses.field(metadata={"pvera_bench": meta})
    return dataclasses.field(default=default, metadata={"pvera_bench": meta})


@dataclass(frozen=True)
class Adapter:
    """One adapter's declaration (see the module docstring)."""

    name: str
    options: type  # a dataclass whose fields are option(...)s
    apply: str  # "module:function"
    help: str
    trains: bool = True
    no_peft_form: str | None = None
    package: str = "pvera-bench"  # the distribution that declared it (set by declare)


_ADAPTERS: dict[str, Adapter] = {}
_CONFIG_DIRS: list[Path] = []
_REFERENCE_DIRS: list[Path] = []
_loading: list[str] = []  # the plugin package being imported (for its error lines)
_loaded = False
_load_error: PluginError | None = None  # a plugin that failed: every later look-up fails the same way

_PLAIN = (int, float, str, bool)


def _type_of(name: str, ann: Any) -> tuple[type | tuple, bool]:
    """``(type, nullable)`` of an option's annotation."""
    args = typing.get_args(ann) if (typing.get_origin(ann) is typing.Union
                                    or type(ann).__name__ == "UnionType") else (ann,)
    rest = tuple(a for a in args if a is not type(None))
    if not rest or not all(a in _PLAIN for a in rest):
        raise TypeError(f"option {name!r}: annotate it with int, float, str, bool, a union of them or X | None, "
                        f"not {ann!r}")
    return (rest[0] if len(rest) == 1 else rest), len(rest) < len(args)


@functools.lru_cache(maxsize=None)
def _specs(cls: type) -> dict[str, OptionSpec]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass; declare the options as @dataclass(frozen=True) fields")
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("pvera_bench")
        if meta is None:
            raise TypeError(f"option {f.name!r} of {cls.__name__}: declare it with pvera_bench.registry.option(...)")
        t, nullable = _type_of(f.name, hints[f.name])
        out[f.name] = OptionSpec(f.name, t, f.default, nullable=nullable, **meta)
    return out


def declare(adapter: Adapter) -> Adapter:
    """Add ``adapter`` to the registry; a name that exists is refused (a :class:`PluginError`)."""
    package = _loading[-1] if _loading else "pvera-bench"
    if adapter.name in _ADAPTERS:
        first = _ADAPTERS[adapter.name].package
        raise PluginError(f"package {package!r} declares adapter {adapter.name!r}, which {first!r} already declares; "
                          f"rename it in {package!r} or uninstall one of the two (pip uninstall {package})")
    if ":" not in adapter.apply:
        raise TypeError(f"adapter {adapter.name!r}: apply must name 'module:function', not {adapter.apply!r}")
    for spec in _specs(adapter.options).values():
        unknown = set(spec.used_when or ()) - {f.name for f in dataclasses.fields(adapter.options)}
        if unknown:
            raise TypeError(f"adapter {adapter.name!r}: option {spec.name!r} is used_when unknown options {unknown}")
    _ADAPTERS[adapter.name] = dataclasses.replace(adapter, package=package)
    return adapter


def add_configs(path: str | Path) -> None:
    """A folder of Hydra configs (``adapter/<name>.yaml``, ``recipe_adapter/<recipe>/<name>.yaml``...)
    searched after pvera-bench's own."""
    _CONFIG_DIRS.append(Path(path).resolve())


def add_references(path: str | Path) -> None:
    """A folder of published-reference YAML files (the format of ``pvera_bench/report/references/``)."""
    _REFERENCE_DIRS.append(Path(path).resolve())


def _import_builtins() -> None:
    for m in pkgutil.iter_modules(specs.__path__):
        importlib.import_module(f"{specs.__name__}.{m.name}")


def _import_plugins() -> None:
    if os.environ.get(PLUGINS_ENV) == "0":
        return
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        package = ep.dist.name if ep.dist is not None else ep.value
        _loading.append(package)
        try:
            importlib.import_module(ep.value.partition(":")[0])
        except PluginError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of someone else's module: one line naming it
            raise PluginError(f"package {package!r} (entry point {ENTRY_POINT_GROUP}: {ep.name} = {ep.value}) failed "
                              f"to import: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; fix it, uninstall it "
                              f"(pip uninstall {package}) or run without plugins ({PLUGINS_ENV}=0)") from None
        finally:
            _loading.pop()


def load() -> None:
    """Import the built-in declarations and every plugin's, once."""
    global _loaded, _load_error
    if not _loaded:
        _loaded = True
        _import_builtins()
        try:
            _import_plugins()
        except PluginError as e:
            _load_error = e
    if _load_error is not None:
        raise _load_error


def get(name: str) -> Adapter:
    load()
    try:
        return _ADAPTERS[name]
    except KeyError:
        raise UnknownAdapterError(f"unknown adapter {name!r}; valid names: {', '.join(names())}") from None


def names() -> list[str]:
    load()
    return sorted(_ADAPTERS)


def options(name: str) -> dict[str, OptionSpec]:
    """``{option: OptionSpec}`` of adapter ``name``, in declaration order."""
    return dict(_specs(get(name).options))


def defaults(name: str) -> dict[str, Any]:
    """The declared default of every option that has one."""
    return {k: s.default for k, s in options(name).items() if not s.required}


def option_used(name: str, option_name: str, values: Mapping[str, Any]) -> bool:
    """Whether adapter ``name`` with options ``values`` reads ``option_name`` (``used_when``)."""
    spec = options(name).get(option_name)
    when = spec.used_when if spec is not None else None
    return when is None or all(values.get(k) in v for k, v in when.items())


def apply_function(name: str) -> Callable[..., None]:
    """The function that builds adapter ``name`` (its module imported now)."""
    module, _, attr = get(name).apply.partition(":")
    return getattr(importlib.import_module(module), attr)


def config_dirs() -> list[Path]:
    load()
    return list(_CONFIG_DIRS)


def reference_dirs() -> list[Path]:
    load()
    return list(_REFERENCE_DIRS)
