"""Adapters that change only the q and v thirds of a block's fused ``attn.qkv`` layer.

The fused layer computes ``out = x W^T + b`` with ``out`` laid out as ``[q | k | v]``. A q/v
adapter computes one low-rank update per projection and adds it in place to the q and v
thirds of ``out``; the k third is never touched, so it stays bit-identical to the frozen
layer. Merging adds the same update to the q and v rows of ``W``.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import AdapterLayer, blocks

# Index of the q and v thirds in the fused output, in the order updates are stacked.
QV = (0, 2)


class QVAdapter(AdapterLayer):
    """Base for lora / vera / pvera: subclasses implement ``update(x, k)`` and ``delta_weight()``."""

    mergeable = True

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        if base.out_features != 3 * base.in_features:
            raise TypeError(f"expected a fused qkv Linear(d, 3d), got {base}")
        self.base = base
        self.dim = base.in_features

    def updates(self, x: torch.Tensor, out: torch.Tensor) -> list[torch.Tensor]:
        """The additive updates of the q and v outputs, each shaped like ``x``.

        ``out`` is the frozen layer's output viewed as ``(..., 3, d)``, for adapters (DoRA)
        whose update depends on it; it is updated in place only after this returns.
        """
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """``(2, d_out, d_in)``: the update of the q and v weight slices (for merging)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            self._check_not_merged()
            return out
        parts = out.unflatten(-1, (3, self.dim))
        for k, u in zip(QV, self.updates(x, parts)):
            parts[..., k, :] += u
        return out

    def _merge(self) -> None:
        w = self._save(self.base.weight).view(3, self.dim, self.dim)
        dw = self.delta_weight().to(w.dtype)
        for i, k in enumerate(QV):
            w[k] += dw[i]


def replace_qkv(model: nn.Module, make) -> None:
    """Replace every block's ``attn.qkv`` with ``make(qkv)``."""
    for blk in blocks(model):
        blk.attn.qkv = make(blk.attn.qkv)


class SharedProjections(nn.Module):
    """Frozen random projections shared by every block (VeRA, PVeRA): buffers, from a seed.

    ``A`` is ``(d, 2 * a_cols)``, ``[A_q | A_v]`` side by side so one matmul serves both
    projections, and ``B`` is ``(2, r, d)`` (q then v). Both are drawn Kaiming-uniform (bound
    ``sqrt(6 / fan_in)``, PEFT's convention) from a CPU generator seeded with ``seed``: the
    same seed gives the same matrices on every machine.
    """

    def __init__(self, d: int, a_cols: int, r: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(int(seed))
        a = torch.empty(d, 2 * a_cols).uniform_(-1, 1, generator=g) * (6.0 / d) ** 0.5
        b = torch.empty(2, r, d).uniform_(-1, 1, generator=g) * (6.0 / r) ** 0.5
        self.register_buffer("A", a)
        self.register_buffer("B", b)


def share(model: nn.Module, name: str, shared: SharedProjections) -> SharedProjections:
    """Register ``shared`` once on the model, so ``.to()`` moves it and it is counted once."""
    model.add_module(name, shared)
    return shared
