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
  ``pytorch`` (nn.Linear's defaults for both: the PVeRA code), or ``noah`` / ``noah_code`` (truncated
  normal std 0.02, biases zero, by torch's / timm 0.5.4's sampler: bottleneck.Bottleneck);
- ``inside_layer_scale``: the block's layer scale (``ls2``, DINOv2's LayerScale; an identity in
  ViT-B/16) multiplies the adapter's output too, ``ls2(MLP(LN(x)) + s * adapter(x))``: the PVeRA
  code, which replaces the DINOv2 block's ``mlp`` so that the block's ``ls2`` applies to the sum
  (leofillioux/pvera models/models.py; facebookresearch/dinov2 dinov2/layers/block.py);
- ``norm_input``: a trained LayerNorm (weight 1, bias 0 at start) on the adapter's input,
  ``Up(dropout(act(Down(LN_a(x)))))``: V-PETL-Bench's ``Adaptformer(adapter_layernorm_option="in")``
  (ImageClassification/models/vision_transformer_adaptformer.py);
- ``outside_drop_path``: the adapter's output is added after the block's drop path,
  ``x + drop_path(ls2(MLP(LN(x)))) + s * adapter(x)`` (V-PETL-Bench's ``Block.forward``: ``x =
  drop_path2(ls2(mlp(norm2(x)))); x = x + adapt_x + residual``); by default the drop path covers
  both, as AdaptFormer's own code. Not with ``inside_layer_scale``.
"""

from __future__ import annotations


import torch
from torch import nn

from .base import AdapterLayer, AdapterOptionError, blocks, check_choice, check_positive
from .bottleneck import Bottleneck, check_common, resolve_width


class ParallelMLP(AdapterLayer):
    """Takes the block's pre-norm ``x``; returns ``ls2(mlp(norm2(x))) + s * adapter(x)``.

    The block's own ``norm2`` and ``ls2`` move in here (the block keeps identities), so the
    frozen path is computed exactly as before and the adapter sees the un-normalised ``x``. With
    ``drop_path`` (``outside_drop_path``) the block's ``drop_path2`` moves in too and covers only
    the frozen path.
    """

    vector_params = ("scale",)  # the learnable scale (a scalar), when it is one

    def __init__(self, norm: nn.Module, mlp: nn.Module, ls: nn.Module, dim: int, width: int, scale: float,
                 learnable_scale: bool = False, act: str = "relu", init: str = "lora", dropout: float = 0.0,
                 inside_layer_scale: bool = False, norm_input: bool = False,
                 drop_path: nn.Module | None = None) -> None:
        super().__init__()
        self.norm, self.mlp, self.ls = norm, mlp, ls
        self.inside_layer_scale = bool(inside_layer_scale)
        self.adapter_norm = nn.LayerNorm(dim) if norm_input else nn.Identity()
        self.adapter = Bottleneck(dim, width, act, init, dropout)
        self.drop_path = drop_path if drop_path is not None else nn.Identity()
        if learnable_scale:
            self.scale = nn.Parameter(torch.full((1,), float(scale)))
        else:
            self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale.to(x.dtype) if isinstance(self.scale, torch.Tensor) else self.scale
        a = self.adapter(self.adapter_norm(x))
        if self.inside_layer_scale:
            return self.ls(self.mlp(self.norm(x)) + a * s)
        return self.drop_path(self.ls(self.mlp(self.norm(x)))) + a * s


def apply(model: nn.Module, width: int | None, reduction: float | None, scale: float, learnable_scale: bool,
          activation: str, init: str, dropout: float, inside_layer_scale: bool, norm_input: bool,
          outside_drop_path: bool) -> None:
    d = model.embed_dim
    w = resolve_width(d, width, reduction)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        check_positive("scale", scale)
    check_choice("learnable_scale", learnable_scale, (False, True))
    check_choice("inside_layer_scale", inside_layer_scale, (False, True))
    check_choice("norm_input", norm_input, (False, True))
    check_choice("outside_drop_path", outside_drop_path, (False, True))
    if inside_layer_scale and outside_drop_path:
        raise AdapterOptionError("adapter.inside_layer_scale=true and adapter.outside_drop_path=true do not combine "
                                 "(the layer scale would cover the adapter, the drop path not); set one to false")
    check_common(activation, init, dropout)
    for blk in blocks(model):
        blk.mlp = ParallelMLP(blk.norm2, blk.mlp, blk.ls2, d, w, scale, learnable_scale, activation, init, dropout,
                              inside_layer_scale, norm_input, blk.drop_path2 if outside_drop_path else None)
        blk.norm2, blk.ls2 = nn.Identity(), nn.Identity()
        if outside_drop_path:
            blk.drop_path2 = nn.Identity()
