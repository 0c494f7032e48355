"""The adapter registry and the pieces every adapter shares.

An adapter is declared in :mod:`pvera_bench.registry` (options, help, ``apply = "module:function"``);
its function ``apply(model, **options)`` freezes nothing and returns nothing: it
inserts :class:`AdapterLayer` modules into every block of a timm ``VisionTransformer`` in
place. :func:`pvera_bench.adapters.apply` does the freezing around it, so after ``apply``
exactly the adapter's own tensors require grad.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from .. import registry
from ..specs.common import DRAWS  # noqa: F401 - lora and vera check their draws option against it

UnknownAdapterError = registry.UnknownAdapterError


class AdapterOptionError(ValueError):
    """A bad value for an adapter option (``adapter.<key>``); the message says the valid ones."""


def check_choice(key: str, value, valid: tuple) -> None:
    """Raise :class:`AdapterOptionError` unless ``value`` is one of ``valid``."""
    if value not in valid:
        raise AdapterOptionError(f"adapter.{key}={value!r} is not valid; use one of: {', '.join(map(str, valid))}")


def check_positive(key: str, value, *, allow_zero: bool = False, upper: float | None = None) -> None:
    """Raise :class:`AdapterOptionError` unless ``value`` is a number > 0 (>= 0 with allow_zero, < upper)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value >= 0 if allow_zero else value > 0) and (upper is None or value < upper)
    if not ok:
        lo = ">= 0" if allow_zero else "> 0"
        hi = f" and < {upper}" if upper is not None else ""
        raise AdapterOptionError(f"adapter.{key}={value!r} is not valid; it must be a number {lo}{hi}")


def get(name: str) -> Callable[..., None]:
    """The function that inserts adapter ``name`` (declared in :mod:`pvera_bench.registry`)."""
    return registry.apply_function(name)


def names() -> list[str]:
    return registry.names()


class AdapterLayer(nn.Module):
    """Base class of every module an adapter inserts.

    ``merge``/``unmerge`` fold the adapter into the frozen weights and back. Merging keeps an
    exact copy of the weights it changes, so ``unmerge`` restores them bit for bit.
    """

    mergeable: bool = False
    #: Names (relative to the layer, dotted) of its parameters that are logical vectors (scales,
    #: VeRA's lambda_d / lambda_b, DoRA's magnitudes), however they are stored: several layers pack
    #: the q and v vectors into one (2, d) tensor. They get no weight decay where the trainer
    #: exempts vectors (``trainer.wd_skip_1d``, timm 0.5.4's rule applied to the per-layer tensors of
    #: the sources); see :func:`no_weight_decay`. Biases of ``nn.Linear`` submodules are declared
    #: by the module type and need not be listed.
    vector_params: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.merged = False
        self._backup: list[tuple[torch.Tensor, torch.Tensor]] = []

    # -- merging -------------------------------------------------------------------------
    def can_merge(self) -> bool:
        return self.mergeable

    def merge(self) -> None:
        if self.merged or not self.can_merge():
            return
        with torch.no_grad():
            self._merge()
        self.merged = True

    def unmerge(self) -> None:
        if not self.merged:
            return
        with torch.no_grad():
            for dst, saved in self._backup:
                dst.copy_(saved)
        self._backup = []
        self.merged = False

    def _save(self, t: torch.Tensor) -> torch.Tensor:
        """Remember ``t``'s current value so that ``unmerge`` can restore it exactly."""
        self._backup.append((t, t.detach().clone()))
        return t

    def _merge(self) -> None:  # pragma: no cover - overridden by mergeable layers
        raise NotImplementedError

    def _check_not_merged(self) -> None:
        if self.merged and self.training:
            raise RuntimeError("adapter is merged into the frozen weights; unmerge before training")

    # -- evaluation noise (stochastic layers only) -------------------------------------------
    eval_noise: "ExampleNoise | None" = None  # set by ``adapters.example_noise`` for one batch

    # -- extra loss terms (PVeRA's KL) -------------------------------------------------------
    def aux_loss(self) -> torch.Tensor | None:
        return None


def stream_seed(*parts) -> int:
    """A 63-bit seed from ``parts`` (JSON-encodable): the same parts give the same seed in every
    process and on every platform."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class ExampleNoise:
    """The noise of one evaluation batch, drawn per example: example ``index[b]`` has its own
    generator, seeded from the pass's ``seed`` and the example's index in its split, and each
    stochastic layer, in forward order, draws ``samples`` noise tensors from it. So an example's
    noise depends on the pass and the example only, not on the batch it shares or the batch size.
    Rows are laid out as the evaluator repeats its batch (``repeat_interleave``): row
    ``b * samples + s`` is sample ``s`` of example ``b``."""

    def __init__(self, seed: int, index: Iterable[int], samples: int, device: torch.device) -> None:
        self.seed, self.index, self.samples, self.device = seed, list(index), int(samples), device
        self._gens: list[torch.Generator] | None = None  # made at the first draw (none in a deterministic mode)

    @property
    def gens(self) -> list[torch.Generator]:
        if self._gens is None:
            self._gens = [torch.Generator(device=self.device).manual_seed(stream_seed(self.seed, i))
                          for i in self.index]
        return self._gens

    def draw(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped and typed like ``like`` (rows: samples x examples)."""
        if len(like) != self.samples * len(self.index):
            raise ValueError(f"expected {self.samples} x {len(self.index)} rows, got {len(like)}")
        out = torch.empty(like.shape, device=like.device, dtype=torch.float32)
        k = self.samples
        for b, g in enumerate(self.gens):  # example b's rows are contiguous: filled in place, no copy
            out[b * k : (b + 1) * k].normal_(generator=g)
        return out.to(like.dtype)
# Modules whose parameters are all vectors by meaning (the bias of a Linear, a norm's affine).
_VECTOR_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)


def no_weight_decay(model: nn.Module) -> set[int]:
    """The ids of the parameters of ``model`` that are vectors by meaning, whatever their shape:
    what every :class:`AdapterLayer` declares in ``vector_params``, the ``bias`` of every
    ``nn.Linear`` / ``nn.Conv2d`` and every parameter of a norm layer. Timm 0.5.4's optimizer rule
    (``ndim <= 1 or name.endswith(".bias")``), which NOAH uses, gives exactly these on the sources'
    per-layer tensors; applied to our packed tensors it would not (a (2, d) ``lambda_b``)."""
    out: set[int] = set()
    for m in model.modules():
        if isinstance(m, AdapterLayer):
            for name in m.vector_params:
                p = m.get_parameter(name) if isinstance(getattr(m, name, None), nn.Parameter) else None
                if p is not None:  # an option may make it a constant (AdaptFormer's fixed scale)
                    out.add(id(p))
        if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
            out.add(id(m.bias))
        if isinstance(m, _VECTOR_MODULES):
            out.update(id(p) for p in m.parameters(recurse=False))
    return out


@dataclass(frozen=True)
class GridDraw:
    """Which grid candidate is being built, for adapters that draw per candidate as the PVeRA code
    does (option ``draws: pvera_code``): its ``index`` in the grid, every candidate's adapter options
    in grid order (``options``; a draw may depend on an earlier candidate's rank) and the run's
    ``seed``; ``after_heads``: the CPU RNG state where the PVeRA code starts drawing from the global
    RNG after its model's backbone and every candidate's head (models/models.py ~56 then
    add_adapter; DoRA's A, ~154-157), None where the run draws its heads otherwise. Set by the run
    around ``apply`` with :func:`building`."""

    index: int = 0
    options: tuple[dict[str, Any], ...] = field(default_factory=lambda: ({},))
    seed: int = 0
    after_heads: torch.Tensor | None = field(default=None, compare=False)


_GRID_DRAW: contextvars.ContextVar[GridDraw] = contextvars.ContextVar("grid_draw", default=GridDraw())


@contextlib.contextmanager
def building(draw: GridDraw) -> Iterator[GridDraw]:
    """``with building(GridDraw(j, options, seed)): apply(...)``: the candidate that ``apply`` builds."""
    token = _GRID_DRAW.set(draw)
    try:
        yield draw
    finally:
        _GRID_DRAW.reset(token)


def grid_draw() -> GridDraw:
    """The candidate being built (index 0 of a one-point grid, seed 0, when none is set)."""
    return _GRID_DRAW.get()


def adapter_layers(model: nn.Module) -> Iterator[AdapterLayer]:
    for m in model.modules():
        if isinstance(m, AdapterLayer):
            yield m


def blocks(model: nn.Module) -> nn.ModuleList:
    b = getattr(model, "blocks", None)
    if b is None:
        raise TypeError(f"expected a timm VisionTransformer with .blocks, got {type(model).__name__}")
    return b
