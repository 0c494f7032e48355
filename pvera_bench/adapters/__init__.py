"""Adapters for frozen timm ViTs: their layers, one module each, and the operations on a model.

    from pvera_bench import adapters
    adapters.available()                        # ['adaptformer', 'bottleneck', ...]
    adapters.apply(vit, "lora", r=8, alpha=8)   # in place; returns vit

Every adapter is declared, torch-free, in :mod:`pvera_bench.registry` (the built-in ones in
``pvera_bench/specs/<name>.py``, others by installed packages through entry points): its options
with their defaults, bounds and help, and ``apply = "module:function"``, the function that
inserts its layers (here: ``pvera_bench/adapters/<name>.py``). Adding an adapter is its
declaration, its layers and one config file ``configs/adapter/<name>.yaml``.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

from torch import nn

from .. import registry
from .base import AdapterLayer, AdapterOptionError, ExampleNoise, UnknownAdapterError, adapter_layers, blocks
from .base import GridDraw, building, get, grid_draw, no_weight_decay, stream_seed
from .base import names as _names

__all__ = [
    "AdapterLayer", "AdapterOptionError", "blocks", "GridDraw", "building", "grid_draw", "UnknownAdapterError", "get",
    "available", "apply", "merge", "unmerge", "aux_losses", "no_weight_decay", "eval_samples", "example_noise",
    "stream_seed", "set_inference", "count_trainable", "count_frozen_buffers",
]


def available() -> list[str]:
    return _names()


def apply(model: nn.Module, name: str, **options) -> nn.Module:
    """Freeze every weight of ``model`` and insert adapter ``name`` into every block, in place; an
    option not given takes its declared default."""
    fn = get(name)
    declared = registry.options(name)
    unknown = [k for k in options if k not in declared]
    missing = [k for k, s in declared.items() if s.required and k not in options]
    if unknown or missing:
        raise TypeError(f"adapter {name!r}: " + "; ".join(
            [f"unexpected keyword argument {k!r}" for k in unknown] + [f"option {k!r} has no default" for k in missing])
            + f" (its options: {', '.join(declared) or 'none'})")
    for p in model.parameters():
        p.requires_grad_(False)
    fn(model, **{**registry.defaults(name), **options})
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
