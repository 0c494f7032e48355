"""AdaptFormer (Chen et al. 2022): a bottleneck parallel to each block's MLP,
``x + MLP(LN(x)) + s * Up(dropout(act(Down(x))))``.

Options (the keyword arguments of :func:`apply`):

- ``width`` or ``reduction`` (width = int(d / reduction), as the PVeRA code,
  leofillioux/pvera models/adapters/adaptformer.py); give one, set the other to null;
- ``scale``: the scale ``s`` (0.1 in AdaptFormer's VTAB setting), fixed, or with
  ``learnable_scale: true`` a trained scalar that starts at ``scale`` (the PVeRA code: a learnable
  ``adapter_alpha`` initialised to 1);
- ``activation`` (``relu`` in AdaptFormer and the PVeRA code), ``dropout`` after it;
- ``init``: ``lora`` (AdaptFormer's: Down as nn.Linear's weight, biases and Up zero) or
  ``pytorch`` (nn.Linear's defaults for both: the PVeRA code);
- ``inside_layer_scale``: the block's layer scale (``ls2``, DINOv2's LayerScale; an identity in
  ViT-B/16) multiplies the adapter's output too, ``ls2(MLP(LN(x)) + s * adapter(x))``: the PVeRA
  code, which replaces the DINOv2 block's ``mlp`` so that the block's ``ls2`` applies to the sum
  (leofillioux/pvera models/models.py; facebookresearch/dinov2 dinov2/layers/block.py).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .base import AdapterLayer, blocks, check_choice, check_positive, register
from .bottleneck import Bottleneck, check_common, resolve_width


class ParallelMLP(AdapterLayer):
    """Takes the block's pre-norm ``x``; returns ``ls2(mlp(norm2(x))) + s * adapter(x)``.

    The block's own ``norm2`` and ``ls2`` move in here (the block keeps identities), so the
    frozen path is computed exactly as before and the adapter sees the un-normalised ``x``.
    """

    vector_params = ("scale",)  # the learnable scale (a scalar), when it is one

    def __init__(self, norm: nn.Module, mlp: nn.Module, ls: nn.Module, dim: int, width: int, scale: float,
                 learnable_scale: bool = False, act: str = "relu", init: str = "lora", dropout: float = 0.0,
                 inside_layer_scale: bool = False) -> None:
        super().__init__()
        self.norm, self.mlp, self.ls = norm, mlp, ls
        self.inside_layer_scale = bool(inside_layer_scale)
        self.adapter = Bottleneck(dim, width, act, init, dropout)
        if learnable_scale:
            self.scale = nn.Parameter(torch.full((1,), float(scale)))
        else:
            self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale.to(x.dtype) if isinstance(self.scale, torch.Tensor) else self.scale
        if self.inside_layer_scale:
            return self.ls(self.mlp(self.norm(x)) + self.adapter(x) * s)
        return self.ls(self.mlp(self.norm(x))) + self.adapter(x) * s


@register("adaptformer")
def apply(model: nn.Module, width: int | None = 64, reduction: float | None = None, scale: float = 0.1,
          learnable_scale: bool = False, activation: Literal["gelu", "relu", "quick_gelu"] = "relu",
          init: Literal["lora", "pytorch", "noah"] = "lora", dropout: float = 0.0,
          inside_layer_scale: bool = False) -> None:
    d = model.embed_dim
    w = resolve_width(d, width, reduction)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        check_positive("scale", scale)
    check_choice("learnable_scale", learnable_scale, (False, True))
    check_choice("inside_layer_scale", inside_layer_scale, (False, True))
    check_common(activation, init, dropout)
    for blk in blocks(model):
        blk.mlp = ParallelMLP(blk.norm2, blk.mlp, blk.ls2, d, w, scale, learnable_scale, activation, init, dropout,
                              inside_layer_scale)
        blk.norm2, blk.ls2 = nn.Identity(), nn.Identity()
