"""Adapters that change only the q and v thirds of a block's fused ``attn.qkv`` layer.

The fused layer computes ``out = x W^T + b`` with ``out`` laid out as ``[q | k | v]``. A q/v
adapter computes one low-rank update per projection and adds it in place to the q and v
thirds of ``out``; the k third is never touched, so it stays bit-identical to the frozen
layer. Merging adds the same update to the q and v rows of ``W``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..specs.vera import PROJECTION_INITS  # noqa: F401 - vera and pvera import it from here
from .base import AdapterLayer, blocks

# Index of the q and v thirds in the fused output, in the order updates are stacked.
QV = (0, 2)


class QVAdapter(AdapterLayer):
    """Base for lora / dora / vera / pvera: subclasses implement ``delta_weight()`` and either
    ``updates`` (the generic path, which adds the returned tensors) or ``add_updates`` (a fused
    path that accumulates into the frozen output directly). ``ks`` are the thirds adapted
    (q, v by default; LoRA with ``targets=qkv`` adapts all three), in the order of the updates."""

    mergeable = True
    ks: tuple[int, ...] = QV

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        if base.out_features != 3 * base.in_features:
            raise TypeError(f"expected a fused qkv Linear(d, 3d), got {base}")
        self.base = base
        self.dim = base.in_features

    def updates(self, x: torch.Tensor, out: torch.Tensor) -> list[torch.Tensor]:
        """The additive updates of the adapted outputs (``ks``), each shaped like ``x``.

        ``out`` is the frozen layer's output viewed as ``(..., 3, d)``, for adapters (DoRA)
        whose update depends on it; it is updated in place only after this returns.
        """
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """``(len(ks), d_out, d_in)``: the update of the adapted weight slices (for merging)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            self._check_not_merged()
            return out
        return self.add_updates(x, out)

    def add_updates(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` (the frozen layer's output) with the updates added in place.

        This generic version adds the tensors ``updates`` returns; lora / vera / pvera override
        it with :func:`add_qv`, which accumulates the last matrix product straight into ``out``.
        """
        parts = out.unflatten(-1, (3, self.dim))
        for k, u in zip(self.ks, self.updates(x, parts)):
            parts[..., k, :] += u
        return out

    def _merge(self) -> None:
        w = self._save(self.base.weight).view(3, self.dim, self.dim)
        dw = self.delta_weight().to(w.dtype)
        for i, k in enumerate(self.ks):
            w[k] += dw[i]


class _AddQV(torch.autograd.Function):
    """``out[..., k-third] += (z_i @ B_i) [* s_i]`` for each adapted third ``k = ks[i]``, in place,
    with ``z_i = z[..., i, :]`` (or ``z[..., 0, :]`` for every i when the codes are shared, as in a
    fused LoRA); see :func:`add_qv`."""

    @staticmethod
    def forward(ctx, out, z, B, s, ks):
        d = B.shape[-1]
        o = out.view(-1, 3 * d)
        z2 = z.reshape(-1, z.shape[-2], z.shape[-1])
        shared = z2.shape[1] == 1
        us = []
        for i, k in enumerate(ks):
            zi = z2[:, 0 if shared else i]
            dst = o[:, k * d:(k + 1) * d]
            if s is None:
                dst.addmm_(zi, B[i])  # one GEMM that accumulates into the strided third
            else:
                u = torch.mm(zi, B[i])
                dst.addcmul_(u, s[i])
                us.append(u)
        ctx.mark_dirty(out)
        ctx.z_shape, ctx.z2_shape, ctx.ks, ctx.shared = z.shape, z2.shape, ks, shared
        # z is needed only for B's gradient (LoRA); VeRA's frozen B needs the products u instead
        ctx.save_for_backward(z2 if ctx.needs_input_grad[2] else None, B, s, *us)
        return out

    @staticmethod
    def backward(ctx, g):
        z2, B, s, *us = ctx.saved_tensors
        ks, shared = ctx.ks, ctx.shared
        d = B.shape[-1]
        g2 = g.reshape(-1, 3 * d)
        gk = [g2[:, k * d:(k + 1) * d] for k in ks]
        gz = gB = gs = None
        if ctx.needs_input_grad[1]:
            gz = g.new_zeros(ctx.z2_shape) if shared else g.new_empty(ctx.z2_shape)
            for i in range(len(ks)):
                b = B[i] if s is None else B[i] * s[i]
                if shared:
                    gz[:, 0].addmm_(gk[i], b.t())
                else:
                    torch.mm(gk[i], b.t(), out=gz[:, i])
            gz = gz.view(ctx.z_shape)
        if ctx.needs_input_grad[2]:
            gB = torch.stack([z2[:, 0 if shared else i].t() @ (gk[i] if s is None else gk[i] * s[i])
                              for i in range(len(ks))])
        if s is not None and ctx.needs_input_grad[3]:
            gs = torch.stack([torch.linalg.vecdot(gk[i], us[i], dim=0) for i in range(len(ks))])
        return g, gz, gB, gs, None


def add_qv(out: torch.Tensor, z: torch.Tensor, B: torch.Tensor, s: torch.Tensor | None = None,
           ks: tuple[int, ...] = QV) -> torch.Tensor:
    """Add ``z_i @ B_i`` (times ``s_i`` per output column, if given) to the thirds ``ks`` (q and v
    by default) of the fused qkv output ``out``, in place, and return ``out`` (autograd-aware).

    ``z``: ``(..., len(ks), r)`` the codes of each third, or ``(..., 1, r)`` one code shared by all;
    ``B``: ``(len(ks), r, d)``; ``s``: ``(len(ks), d)`` or None; all of ``out``'s dtype. ``out`` must
    be freshly computed by the frozen layer (nothing else may hold it for backward: its version
    counter is bumped, so autograd would notice). The gradient of ``out`` passes through
    untouched: unlike ``parts[..., k, :] += u`` there is no update tensor to add, and no copy of
    the whole output's gradient (autograd's CopySlices) in backward.
    """
    if not out.is_contiguous():  # nn.Linear's output always is; a forward hook's might not be
        out = out.contiguous()
    return _AddQV.apply(out, z, B, s, tuple(ks))


def replace_qkv(model: nn.Module, make) -> None:
    """Replace every block's ``attn.qkv`` with ``make(qkv)``."""
    for blk in blocks(model):
        blk.attn.qkv = make(blk.attn.qkv)



class SharedProjections(nn.Module):
    """Frozen random projections shared by every block (VeRA, PVeRA): buffers.

    ``A`` is ``(d, 2 * a_cols)``, ``[A_q | A_v]`` side by side so one matmul serves both
    projections, and ``B`` is ``(2, r, d)`` (q then v). Both are uniform in ``+-sqrt(6 / fan_in)``
    (``kaiming_uniform_``), drawn from ``generator`` (the global RNG when None):

    - ``init="pvera_code"``: as the PVeRA code (leofillioux/pvera, models/models.py), which calls
      ``kaiming_uniform_`` on tensors shaped (d, a_cols) and (r, d), so torch's fan_in is their
      size(1): A's bound is ``sqrt(6 / a_cols)``, B's ``sqrt(6 / d)``; drawn A_q, A_v, B_q, B_v;
    - ``init="peft"``: PEFT's convention (A (r, d) and B (d, r) as Linear weights): A's bound
      ``sqrt(6 / d)``, B's ``sqrt(6 / r)``.
    """

    def __init__(self, d: int, a_cols: int, r: int, init: str = "pvera_code",
                 generator: torch.Generator | None = None, given: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        super().__init__()
        g = generator
        if given is not None:  # drawn by the caller (code_projections)
            a, b = given
        elif init == "pvera_code":
            a_q, a_v = (torch.empty(d, a_cols).uniform_(-(6.0 / a_cols) ** 0.5, (6.0 / a_cols) ** 0.5, generator=g)
                        for _ in range(2))
            b_q, b_v = (torch.empty(r, d).uniform_(-(6.0 / d) ** 0.5, (6.0 / d) ** 0.5, generator=g) for _ in range(2))
            a, b = torch.cat((a_q, a_v), dim=1), torch.stack((b_q, b_v))
        elif init == "peft":
            a = torch.empty(d, 2 * a_cols).uniform_(-1, 1, generator=g) * (6.0 / d) ** 0.5
            b = torch.empty(2, r, d).uniform_(-1, 1, generator=g) * (6.0 / r) ** 0.5
        else:
            raise ValueError(f"unknown projection init {init!r}")
        self.register_buffer("A", a)
        self.register_buffer("B", b)


def code_projections(d: int, shapes: list[tuple[int, int]], index: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate ``index``'s frozen projections as the PVeRA code draws them for a grid
    (leofillioux/pvera models/models.py, vera / pvera branches): under ``local_seed(seed)``, for each
    candidate in grid order, ``kaiming_uniform_`` on q_down (d, a_cols), v_down, q_up (r, d), v_up.
    ``shapes`` holds every candidate's (a_cols, r). Returns ``A`` (d, 2 a_cols) and ``B`` (2, r, d)."""
    g = torch.Generator().manual_seed(int(seed))
    for a_cols, r in shapes[: index + 1]:
        qd, vd = torch.empty(d, a_cols), torch.empty(d, a_cols)
        qu, vu = torch.empty(r, d), torch.empty(r, d)
        for t in (qd, vd, qu, vu):
            nn.init.kaiming_uniform_(t, generator=g)
    return torch.cat((qd, vd), dim=1), torch.stack((qu, vu))


def share(model: nn.Module, name: str, shared: SharedProjections) -> SharedProjections:
    """Register ``shared`` once on the model, so ``.to()`` moves it and it is counted once."""
    model.add_module(name, shared)
    return shared
