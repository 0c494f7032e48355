"""AdaptFormer (Chen et al. 2022): a bottleneck parallel to each block's MLP,
``x + MLP(LN(x)) + s * Up(ReLU(Down(x)))``, with ``s`` fixed (0.1 in the VTAB setting)."""

from __future__ import annotations

import torch
from torch import nn

from .base import AdapterLayer, blocks, register
from .bottleneck import Bottleneck


class ParallelMLP(AdapterLayer):
    """Takes the block's pre-norm ``x``; returns ``ls2(mlp(norm2(x))) + s * adapter(x)``.

    The block's own ``norm2`` and ``ls2`` move in here (the block keeps identities), so the
    frozen path is computed exactly as before and the adapter sees the un-normalised ``x``.
    """

    def __init__(self, norm: nn.Module, mlp: nn.Module, ls: nn.Module, dim: int, width: int, scale: float) -> None:
        super().__init__()
        self.norm, self.mlp, self.ls = norm, mlp, ls
        self.adapter = Bottleneck(dim, width, act=nn.ReLU)
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ls(self.mlp(self.norm(x))) + self.adapter(x) * self.scale


@register("adaptformer")
def apply(model: nn.Module, width: int = 64, scale: float = 0.1) -> None:
    d = model.embed_dim
    for blk in blocks(model):
        blk.mlp = ParallelMLP(blk.norm2, blk.mlp, blk.ls2, d, width, scale)
        blk.norm2, blk.ls2 = nn.Identity(), nn.Identity()
