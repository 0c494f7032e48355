"""DoRA on the q and v projections (Liu et al. 2024, PEFT's conventions).

Each adapted weight slice ``W`` (d_out x d_in) becomes ``m * (W + dW) / ||W + dW||``, the norm
per output row, ``dW`` a LoRA update and ``m`` a trainable magnitude initialised to ``||W||``.
As in PEFT (and the DoRA paper, section 4.3) the norm is treated as a constant in backward.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import register
from .lora import LoraQV
from .qkv import QV, QVAdapter, replace_qkv


class DoraQV(LoraQV):
    vector_params = ("magnitude",)  # per-projection vectors, stored (2, ...) or (d,)
    def __init__(self, base: nn.Linear, r: int, alpha: float) -> None:
        super().__init__(base, r, alpha)
        self.magnitude = nn.Parameter(torch.linalg.vector_norm(self._weights().detach(), dim=-1))

    def _weights(self) -> torch.Tensor:
        return self.base.weight.view(3, self.dim, self.dim)[0::2]  # q and v slices: (2, d_out, d_in)

    def _scale(self) -> torch.Tensor:
        """``m / ||W + dW||`` per projection and output row (2, d_out), the norm detached."""
        norm = torch.linalg.vector_norm(self._weights() + super().delta_weight(), dim=-1)
        return self.magnitude / norm.detach()

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
        w = self._weights()
        return self._scale()[..., None] * (w + super().delta_weight()) - w


@register("dora")
def apply(model: nn.Module, r: int = 8, alpha: float = 8.0) -> None:
    replace_qkv(model, lambda qkv: DoraQV(qkv, r, alpha))
