"""Bottleneck adapters (Houlsby et al. 2019): ``h + Up(act(Down(h)))`` on the output of each
block's attention and of its MLP, inside the residual branch. ``Up`` starts at zero, so the
adapted model starts as the frozen one."""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import AdapterLayer, blocks, register


class Bottleneck(nn.Module):
    """``Up(act(Down(x)))``: Down Kaiming-initialised, Up zero-initialised."""

    def __init__(self, dim: int, width: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.down = nn.Linear(dim, int(width))
        self.act = act()
        self.up = nn.Linear(int(width), dim)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


class SerialAdapter(AdapterLayer):
    """``y = module(x, ...); y + bottleneck(y)`` (extra arguments, e.g. attn_mask, pass through)."""

    def __init__(self, module: nn.Module, dim: int, width: int) -> None:
        super().__init__()
        self.module = module
        self.adapter = Bottleneck(dim, width)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.module(x, *args, **kwargs)
        return y + self.adapter(y)


@register("bottleneck")
def apply(model: nn.Module, width: int = 8) -> None:
    d = model.embed_dim
    for blk in blocks(model):
        blk.attn = SerialAdapter(blk.attn, d, width)
        blk.mlp = SerialAdapter(blk.mlp, d, width)
