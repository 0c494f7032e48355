"""Adapters for frozen timm ViTs, one module each, registered by name.

    from pvera_bench import adapters
    adapters.available()                        # ['adaptformer', 'bottleneck', ...]
    adapters.apply(vit, "lora", r=8, alpha=8)   # in place; returns vit

Adding an adapter means adding one module here that decorates its ``apply`` function with
``@register("name")`` (modules in this package are imported automatically) and one config
file ``configs/adapter/<name>.yaml``. An option that only some values of another option read
is declared in the module as ``OPTIONS_USED_ONLY_WHEN = {"option": {"other": [values]}}`` (a
literal): the resume key leaves it out otherwise (``schema.key_view``).
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from typing import Iterable, Iterator

from torch import nn

from .base import AdapterLayer, AdapterOptionError, ExampleNoise, UnknownAdapterError, adapter_layers, register
from .base import GridDraw, building, get, grid_draw, no_weight_decay, stream_seed
from .base import names as _names

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in ("base", "qkv"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = [
    "AdapterLayer", "AdapterOptionError", "GridDraw", "building", "grid_draw", "UnknownAdapterError", "register", "get",
    "available", "apply", "merge", "unmerge", "aux_losses", "no_weight_decay", "eval_samples", "example_noise",
    "stream_seed", "set_inference", "count_trainable", "count_frozen_buffers",
]


def available() -> list[str]:
    return _names()


def apply(model: nn.Module, name: str, **options) -> nn.Module:
    """Freeze every weight of ``model`` and insert adapter ``name`` into every block, in place."""
    fn = get(name)
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        fn(model, **options)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise TypeError(f"adapter {name!r}: {e}") from None
        raise
    return model


def merge(model: nn.Module) -> int:
    """Fold every mergeable adapter layer into the frozen weights; returns how many were merged."""
    layers = [m for m in adapter_layers(model) if m.can_merge()]
    for m in layers:
        m.merge()
    return len(layers)


def unmerge(model: nn.Module) -> None:
    for m in adapter_layers(model):
        m.unmerge()


def fully_mergeable(model: nn.Module) -> bool:
    layers = list(adapter_layers(model))
    return bool(layers) and all(m.can_merge() for m in layers)


def aux_losses(model: nn.Module) -> list[AdapterLayer]:
    """The layers that add a loss term in training (PVeRA's KL / beta): find them once, then
    ``sum(t for m in layers if (t := m.aux_loss()) is not None)`` each step."""
    return [m for m in adapter_layers(model) if type(m).aux_loss is not AdapterLayer.aux_loss]


def eval_samples(model: nn.Module) -> int:
    """How many stochastic forward passes an evaluation averages (1 for deterministic adapters)."""
    return max([getattr(m, "eval_samples", 1) for m in adapter_layers(model)], default=1)


@contextlib.contextmanager
def example_noise(model: nn.Module, seed: int, index: Iterable[int], samples: int, device) -> Iterator[None]:
    """Within this block, stochastic layers evaluate with noise drawn per example
    (``ExampleNoise``: keyed by ``seed`` and each example's index), never from torch's global
    generator."""
    layers = [m for m in adapter_layers(model) if hasattr(m, "eval_samples")]
    noise = ExampleNoise(seed, index, samples, device) if layers else None
    for m in layers:
        m.eval_noise = noise
    try:
        yield
    finally:
        for m in layers:
            m.eval_noise = None


def set_inference(model: nn.Module, mode: str, mc_samples: int = 1) -> None:
    """Set the inference mode of stochastic adapters (PVeRA); an error if there are none."""
    layers = [m for m in adapter_layers(model) if hasattr(m, "set_inference")]
    if not layers:
        raise ValueError("this adapter has no inference modes (only stochastic adapters such as pvera do)")
    for m in layers:
        m.set_inference(mode, mc_samples)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_frozen_buffers(model: nn.Module) -> int:
    """Elements of the buffers adapters added (VeRA/PVeRA's shared random projections), once each."""
    seen: set[int] = set()
    total = 0
    for mod in model.modules():
        if isinstance(mod, AdapterLayer) or type(mod).__module__.startswith(__name__):
            for b in mod.buffers(recurse=False):
                if id(b) not in seen:
                    seen.add(id(b))
                    total += b.numel()
    return total
