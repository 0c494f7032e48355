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
    """Base for lora / dora / vera / pvera: subclasses implement ``delta_weight()`` and either
    ``updates`` (the generic path, which adds the returned tensors) or ``add_updates`` (a fused
    path that accumulates into the frozen output directly)."""

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
        return self.add_updates(x, out)

    def add_updates(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` (the frozen layer's output) with the q and v updates added in place.

        This generic version adds the tensors ``updates`` returns; lora / vera / pvera override
        it with :func:`add_qv`, which accumulates the last matrix product straight into ``out``.
        """
        parts = out.unflatten(-1, (3, self.dim))
        for k, u in zip(QV, self.updates(x, parts)):
            parts[..., k, :] += u
        return out

    def _merge(self) -> None:
        w = self._save(self.base.weight).view(3, self.dim, self.dim)
        dw = self.delta_weight().to(w.dtype)
        for i, k in enumerate(QV):
            w[k] += dw[i]


class _AddQV(torch.autograd.Function):
    """``out[..., k-third] += (z_k @ B_k) [* s_k]`` for (k, z_k, B_k, s_k) = (q, z[..., 0, :], B[0], s[0])
    and (v, z[..., 1, :], B[1], s[1]), in place; see :func:`add_qv`."""

    @staticmethod
    def forward(ctx, out, z, B, s):
        d = B.shape[-1]
        o = out.view(-1, 3 * d)
        z2 = z.reshape(-1, 2, z.shape[-1])
        us = []
        for i, k in enumerate(QV):
            dst = o[:, k * d:(k + 1) * d]
            if s is None:
                dst.addmm_(z2[:, i], B[i])  # one GEMM that accumulates into the strided third
            else:
                u = torch.mm(z2[:, i], B[i])
                dst.addcmul_(u, s[i])
                us.append(u)
        ctx.mark_dirty(out)
        ctx.z_shape, ctx.z2_shape = z.shape, z2.shape
        # z is needed only for B's gradient (LoRA); VeRA's frozen B needs the products u instead
        ctx.save_for_backward(z2 if ctx.needs_input_grad[2] else None, B, s, *us)
        return out

    @staticmethod
    def backward(ctx, g):
        z2, B, s, *us = ctx.saved_tensors
        d = B.shape[-1]
        g2 = g.reshape(-1, 3 * d)
        gk = [g2[:, k * d:(k + 1) * d] for k in QV]
        gz = gB = gs = None
        if ctx.needs_input_grad[1]:
            gz = g.new_empty(ctx.z2_shape)
            for i in range(2):
                b = B[i] if s is None else B[i] * s[i]
                torch.mm(gk[i], b.t(), out=gz[:, i])
            gz = gz.view(ctx.z_shape)
        if ctx.needs_input_grad[2]:
            gB = torch.stack([z2[:, i].t() @ (gk[i] if s is None else gk[i] * s[i]) for i in range(2)])
        if s is not None and ctx.needs_input_grad[3]:
            gs = torch.stack([torch.linalg.vecdot(gk[i], us[i], dim=0) for i in range(2)])
        return g, gz, gB, gs


def add_qv(out: torch.Tensor, z: torch.Tensor, B: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
    """Add ``z_k @ B_k`` (times ``s_k`` per output column, if given) to the q and v thirds of the
    fused qkv output ``out``, in place, and return ``out`` (autograd-aware).

    ``z``: ``(..., 2, r)``, the q and v codes; ``B``: ``(2, r, d)``; ``s``: ``(2, d)`` or None; all of
    ``out``'s dtype. ``out`` must be freshly computed by the frozen layer (nothing else may hold it
    for backward: its version counter is bumped, so autograd would notice). The gradient of ``out``
    passes through untouched: unlike ``parts[..., k, :] += u`` there is no update tensor to add,
    and no copy of the whole output's gradient (autograd's CopySlices) in backward.
    """
    if not out.is_contiguous():  # nn.Linear's output always is; a forward hook's might not be
        out = out.contiguous()
    return _AddQV.apply(out, z, B, s)


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
