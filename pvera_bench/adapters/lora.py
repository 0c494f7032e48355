"""LoRA on the q and v projections: ``delta = (alpha / r) * x A B``, ``B`` zero-initialised."""

from __future__ import annotations

import torch
from torch import nn

from .base import register
from .qkv import QVAdapter, add_qv, replace_qkv


class LoraQV(QVAdapter):
    def __init__(self, base: nn.Linear, r: int, alpha: float) -> None:
        super().__init__(base)
        d = self.dim
        self.r, self.scale = int(r), float(alpha) / float(r)
        # One (d, 2r) matrix holds A_q and A_v side by side: one matmul for both projections.
        bound = 1.0 / d**0.5  # kaiming_uniform_(a=sqrt(5)), as nn.Linear and PEFT initialise A
        self.lora_A = nn.Parameter(torch.empty(d, 2 * self.r).uniform_(-bound, bound))
        self.lora_B = nn.Parameter(torch.zeros(2, self.r, d))

    def updates(self, x: torch.Tensor, out: torch.Tensor | None = None) -> list[torch.Tensor]:
        h = (x @ self.lora_A).split(self.r, dim=-1)
        return [(h[k] @ self.lora_B[k]) * self.scale for k in range(2)]

    def add_updates(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        h = (x @ self.lora_A) * self.scale  # (..., 2r): scaling the r-wide codes, not the d-wide update
        return add_qv(out, h.unflatten(-1, (2, self.r)).to(out.dtype), self.lora_B.to(out.dtype))

    def delta_weight(self) -> torch.Tensor:
        a = self.lora_A.view(self.dim, 2, self.r).transpose(0, 1)  # (2, d_in, r)
        return (a @ self.lora_B).transpose(1, 2) * self.scale  # (2, d_out, d_in)


@register("lora")
def apply(model: nn.Module, r: int = 8, alpha: float = 8.0) -> None:
    replace_qkv(model, lambda qkv: LoraQV(qkv, r, alpha))
