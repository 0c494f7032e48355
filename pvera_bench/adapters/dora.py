"""DoRA on the q and v projections (Liu et al. 2024).

Each adapted weight slice ``W`` (d_out x d_in) becomes ``m * (W + dW) / ||W + dW||``, ``dW`` a
LoRA update and ``m`` a magnitude initialised to ``||W||``. The defaults are PEFT's conventions:
the norm per output row, treated as a constant in backward (PEFT, and the DoRA paper section 4.3),
``m`` trained, ``dW`` scaled by ``alpha / r`` with PEFT's LoRA init (A uniform, B zero).

Options (the keyword arguments of :func:`apply`) reach the PVeRA code's DoRA
(leofillioux/pvera, models/adapters/dora.py), which differs in each of them:

- ``norm_axis``: ``row`` (PEFT) or ``column``: the code's ``norm(p=2, dim=0)`` of the (d_out, d_in)
  weight, one norm and one magnitude per INPUT column;
- ``detach_norm``: True (PEFT) or False (the code: the norm is an ordinary autograd op);
- ``train_magnitude``: True (PEFT) or False (the code names it ``mag_q`` / ``mag_v``, and
  models/models.py ``freeze()`` trains only parameters whose name contains ``adapter``: the
  magnitude stays at ``||W||``; here it is then a buffer);
- ``scaling``: ``alpha_over_r`` (PEFT) or ``one`` (the code stores ``alpha / rank`` in
  ``adapter_alpha`` but never applies it: ``dW = A @ B``);
- ``init``: ``peft`` (A as nn.Linear's, B zero) or ``pvera_code``: the code's ``A`` is
  ``torch.randn(d, r) / sqrt(r)`` and sits on the OUTPUT side (``dW = A @ B`` with A (d_out, r),
  B (r, d_in) zero), drawn A_q then A_v from the global RNG block after block (the code does not
  reseed per block for DoRA, unlike its LoRA and VeRA), after the backbone and every grid
  candidate's head (models/models.py ~56, ~154-157; dora.py ~23-24) and interleaved over the grid
  as GridSearchDoRA builds it: in each block candidate 0's A_q, A_v, then candidate 1's, ... So a run
  that draws its heads as the code (``backbone.head_draws=after_backbone``) draws candidate j's A
  from that RNG state (``GridDraw.after_heads``); without it, from the global RNG as it stands
  (candidate alone, block after block); here ``lora_B[k]`` holds ``A_k`` transposed
  and ``lora_A`` starts at zero, so that ``dW_k = (lora_A lora_B_k)^T = A_k B_k`` as in the code.

The code also recomputes the k third as ``||W_k|| * W_k / ||W_k||``, equal to ``W_k`` up to float
rounding; here the k third is the frozen layer's output, bit for bit.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from ..specs.dora import INITS, NORM_AXES, SCALINGS
from .base import blocks, check_choice, check_positive, grid_draw
from .lora import LoraQV
from .qkv import QV, QVAdapter, replace_qkv



class DoraQV(LoraQV):
    vector_params = ("magnitude",)  # one magnitude vector per projection, stored (2, d)

    def __init__(self, base: nn.Linear, r: int, alpha: float, norm_axis: str = "row", detach_norm: bool = True,
                 train_magnitude: bool = True, scaling: str = "alpha_over_r", init: str = "peft",
                 code_a: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        super().__init__(base, r, alpha, init=None if init == "pvera_code" else "peft")
        self.norm_dim = -1 if norm_axis == "row" else -2  # over d_in (one per row) | over d_out (per column)
        self.detach_norm = bool(detach_norm)
        if scaling == "one":
            self.scale = 1.0
        if init == "pvera_code":
            a_q, a_v = code_a if code_a is not None else code_dora_a(self.dim, self.r)
            with torch.no_grad():
                self.lora_B.copy_(torch.stack((a_q.t(), a_v.t())))
        m = torch.linalg.vector_norm(self._weights().detach(), dim=self.norm_dim)  # (2, d)
        if train_magnitude:
            self.magnitude = nn.Parameter(m)
        else:
            self.register_buffer("magnitude", m)

    def _weights(self) -> torch.Tensor:
        return self.base.weight.view(3, self.dim, self.dim)[0::2]  # q and v slices: (2, d_out, d_in)

    def _scale(self) -> torch.Tensor:
        """``m / ||W + dW||`` per projection and row (or column), shaped (2, d)."""
        norm = torch.linalg.vector_norm(self._weights() + super().delta_weight(), dim=self.norm_dim)
        return self.magnitude / (norm.detach() if self.detach_norm else norm)

    def _adapted(self) -> torch.Tensor:
        """The adapted q and v weights ``m * (W + dW) / ||W + dW||``: (2, d_out, d_in)."""
        v = self._weights() + super().delta_weight()
        s = self._scale()
        return v * (s[..., None] if self.norm_dim == -1 else s[..., None, :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_dim == -1 or self.merged:  # output-side scaling: reuse the frozen output
            return super().forward(x)
        # input-side scaling (the code's column norm): one GEMM with the adapted fused weight
        w = self.base.weight.view(3, self.dim, self.dim)
        wq, wv = self._adapted().to(w.dtype)
        return F.linear(x, torch.cat((wq, w[1], wv)), self.base.bias)

    def updates(self, x: torch.Tensor, out: torch.Tensor | None = None) -> list[torch.Tensor]:
        # new_k = s_k * (x W_k^T + lora_k) + b_k = out_k + (s_k - 1) * (out_k - b_k) + s_k * lora_k
        scale = self._scale().to(out.dtype)
        lora = super().updates(x)
        bias = self.base.bias
        result = []
        for i, k in enumerate(QV):
            # a new tensor either way: ``out`` is updated in place afterwards, and a view of it
            # kept for the magnitude's gradient would be stale
            frozen = out[..., k, :].clone() if bias is None else out[..., k, :] - bias.view(3, -1)[k]
            result.append((scale[i] - 1) * frozen + scale[i] * lora[i])
        return result

    # DoRA's update depends on the frozen output: the generic path (``updates``), not LoRA's.
    add_updates = QVAdapter.add_updates

    def delta_weight(self) -> torch.Tensor:
        return self._adapted() - self._weights()


def code_dora_a(d: int, r: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One DoRA's ``(A_q, A_v)`` as the PVeRA code draws them (models/adapters/dora.py ~21-24):
    ``std = 1 / torch.sqrt(torch.tensor(rank).float())``; ``randn(in_dim, rank) * std`` for q, then v."""
    std = 1 / torch.sqrt(torch.tensor(r).float())
    return torch.randn(d, r, generator=generator) * std, torch.randn(d, r, generator=generator) * std


def code_grid_a(d: int, r: int, depth: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """The grid candidate being built's ``(A_q, A_v)`` of every block, from the RNG state after the
    code's backbone and heads (``GridDraw.after_heads``): GridSearchDoRA builds, in each block, one
    DoRA per candidate in grid order (models/models.py ~154-157). None without that state."""
    c = grid_draw()
    if c.after_heads is None:
        return None
    g = torch.Generator()
    g.set_state(c.after_heads)
    ranks = [int(o.get("r", r)) for o in c.options]
    if ranks[c.index] != int(r):
        raise ValueError(f"candidate {c.index}: rank {r} is not the grid's {ranks[c.index]}")
    return [[code_dora_a(d, k, g) for k in ranks][c.index] for _ in range(depth)]


def apply(model: nn.Module, r: int, alpha: float, norm_axis: str, detach_norm: bool, train_magnitude: bool, scaling: str,
          init: str) -> None:
    check_positive("r", r)
    check_choice("norm_axis", norm_axis, NORM_AXES)
    check_choice("detach_norm", detach_norm, (True, False))
    check_choice("train_magnitude", train_magnitude, (True, False))
    check_choice("scaling", scaling, SCALINGS)
    check_choice("init", init, INITS)
    drawn = iter(code_grid_a(model.embed_dim, r, len(blocks(model))) or []) if init == "pvera_code" else iter(())
    replace_qkv(model, lambda qkv: DoraQV(qkv, r, alpha, norm_axis, detach_norm, train_magnitude, scaling, init,
                                          next(drawn, None)))
