"""IA3 (Liu et al. 2022): learned vectors, initialised to ones, rescale the k and v outputs of
``attn.qkv`` (after the bias) and the MLP hidden activations (the input of ``mlp.fc2``)."""

from __future__ import annotations

import torch
from torch import nn

from .base import AdapterLayer, blocks


class IA3KV(AdapterLayer):
    """``qkv(x) * [1 | l_k | l_v]``; the q third is multiplied by exactly one."""
    vector_params = ("scale_kv",)  # per-projection vectors, stored (2, ...) or (d,)

    mergeable = True

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base, self.dim = base, base.in_features
        self.scale_kv = nn.Parameter(torch.ones(2, self.dim))

    def _scale(self) -> torch.Tensor:
        return torch.cat((self.scale_kv.new_ones(1, self.dim), self.scale_kv)).flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_not_merged()
        out = self.base(x)
        return out if self.merged else out * self._scale().to(out.dtype)

    def _merge(self) -> None:
        s = self._scale()
        self._save(self.base.weight).mul_(s[:, None].to(self.base.weight.dtype))
        if self.base.bias is not None:
            self._save(self.base.bias).mul_(s.to(self.base.bias.dtype))


class IA3FF(AdapterLayer):
    """``fc2(h * l_ff)``: rescales the MLP's hidden activations."""
    vector_params = ("scale_ff",)  # per-projection vectors, stored (2, ...) or (d,)

    mergeable = True

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.scale_ff = nn.Parameter(torch.ones(base.in_features))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        self._check_not_merged()
        return self.base(h if self.merged else h * self.scale_ff.to(h.dtype))

    def _merge(self) -> None:
        self._save(self.base.weight).mul_(self.scale_ff[None, :].to(self.base.weight.dtype))


def apply(model: nn.Module) -> None:
    for blk in blocks(model):
        blk.attn.qkv = IA3KV(blk.attn.qkv)
        blk.mlp.fc2 = IA3FF(blk.mlp.fc2)
