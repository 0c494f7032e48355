"""Bottleneck adapters (Houlsby et al. 2019): ``h + Up(dropout(act(Down(h))))`` on the output of
each block's attention and/or MLP, inside the residual branch.

Options (the keyword arguments of :func:`apply`):

- ``width`` or ``reduction`` (width = d / reduction, rounded down as ``int(d / reduction)`` in the
  PVeRA code, leofillioux/pvera models/adapters/bottleneck.py); give one, set the other to null;
- ``placement``: ``attn_mlp`` (after the attention and after the MLP: Houlsby's and the PVeRA
  code's), ``mlp`` (after the MLP only, inside the MLP branch's drop path) or ``mlp_after_drop_path``
  (after the MLP branch's drop path: ``x + y + adapter(y)`` with ``y = drop_path(mlp(norm2(x)))``,
  NOAH's, ZhangYuanhan-AI/NOAH model/supernet_vision_transformer_timm.py ``Block.forward``
  ``x + self.adapter(self.drop_path(self.mlp(self.norm2(x))))`` with model/module/adapter_super.py
  returning ``identity + out``; equal to ``mlp`` when drop path is off);
- ``activation``: ``gelu``, ``relu`` (PVeRA code: config/adapters.yaml) or ``quick_gelu``
  (``x * sigmoid(1.702 x)``: NOAH's model/module/adapter_super.py);
- ``dropout``: after the activation, in training (NOAH: ``--drop_rate_adapter`` 0.1);
- ``init``: ``lora`` (Down as nn.Linear's weight, biases and Up zero: the adapted model starts as
  the frozen one), ``pytorch`` (nn.Linear's defaults for both: the PVeRA code) or ``noah``
  (weights truncated normal std 0.02, biases zero: NOAH re-initialises every nn.Linear after
  building the model; torch's sampler) or ``noah_code`` (NOAH's own draws, in NOAH's order: see
  :func:`noah_code_weights`; with timm 0.5.4's sampler, :mod:`pvera_bench.truncnormal`; placement
  ``mlp_after_drop_path`` or ``mlp``).
"""

from __future__ import annotations


import contextlib
import math

import torch
from torch import nn

from ..truncnormal import trunc_normal_timm054_
from ..specs.bottleneck import ACTIVATIONS as ACTIVATION_NAMES
from ..specs.bottleneck import INITS, PLACEMENTS
from .base import AdapterLayer, AdapterOptionError, blocks, check_choice, check_positive


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)`` (NOAH's adapter activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = dict(zip(ACTIVATION_NAMES, (nn.GELU, nn.ReLU, QuickGELU)))


def resolve_width(d: int, width, reduction) -> int:
    """``width``, or ``int(d / reduction)``; exactly one of them must be given."""
    if (width is None) == (reduction is None):
        raise AdapterOptionError(f"give exactly one of adapter.width and adapter.reduction (got width={width}, "
                                 f"reduction={reduction}); set the other to null")
    if reduction is not None:
        check_positive("reduction", reduction)
        width = int(d / reduction)
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width:
        raise AdapterOptionError(f"adapter.width={width!r} is not valid; it must be an integer >= 1")
    return width


class Bottleneck(nn.Module):
    """``Up(dropout(act(Down(x))))``."""

    def __init__(self, dim: int, width: int, act: str = "gelu", init: str = "lora", dropout: float = 0.0) -> None:
        super().__init__()
        self.down = nn.Linear(dim, int(width))
        self.act = ACTIVATIONS[act]()
        self.drop = nn.Dropout(float(dropout)) if dropout else nn.Identity()
        self.up = nn.Linear(int(width), dim)
        if init == "lora":
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
        elif init in ("noah", "noah_code"):  # noah_code: timm 0.5.4's inverse CDF, NOAH's draws; noah: torch's sampler
            draw = trunc_normal_timm054_ if init == "noah_code" else nn.init.trunc_normal_
            for lin in (self.down, self.up):
                draw(lin.weight, std=0.02, a=-2.0, b=2.0)
                nn.init.zeros_(lin.bias)
        # pytorch: nn.Linear's own initialisation, as constructed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.drop(self.act(self.down(x))))


class SerialAdapter(AdapterLayer):
    """``y = module(x, ...); y + bottleneck(y)`` (extra arguments, e.g. attn_mask, pass through)."""

    def __init__(self, module: nn.Module, dim: int, width: int, act: str = "gelu", init: str = "lora",
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.module = module
        self.adapter = Bottleneck(dim, width, act, init, dropout)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.module(x, *args, **kwargs)
        return y + self.adapter(y)


def check_common(activation, init, dropout) -> None:
    check_choice("activation", activation, tuple(ACTIVATIONS))
    check_choice("init", init, INITS)
    check_positive("dropout", dropout, allow_zero=True, upper=1.0)


# NOAH builds ViT-B as timm 0.5.4's vit_base_patch16_224_in21k: its head is constructed with the default
# cfg's 21843 classes (model/supernet_vision_transformer_timm.py ~129-131; timm 0.5.4 build_model_with_cfg
# sets num_classes from it), then re-drawn by reset_classifier (supernet_train_prompt.py ~326-329).
NOAH_BUILT_HEAD_CLASSES = 21843


def noah_code_weights(model: nn.Module, width: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every block's Adapter (Down, Up) weights as NOAH's code draws them, from the global RNG as it
    stands (NOAH: torch.manual_seed(seed) right before building the model, supernet_train_prompt.py
    ~243, ~302), which is left where NOAH's is after building its model. NOAH's
    VisionTransformer.__init__ (model/supernet_vision_transformer_timm.py ~379-462) constructs, in this
    order: PatchEmbed's Conv2d; per block qkv, proj (Attention ~214-217), fc1, fc2 (timm 0.5.4 Mlp),
    the Adapter's ln1, ln2 (model/module/adapter_super.py ~32-34) re-drawn by its init_weights
    (xavier_uniform_ weight, normal_(std 1e-6) bias, ~38-43); the head; then init_weights('') (~520-531):
    trunc_normal_(std .02) of pos_embed, cls_token, then of every nn.Linear in module order (qkv, proj,
    fc1, fc2, ln1, ln2 per block, the head; ``_init_vit_weights`` ~686), biases zero."""
    d, conv, per_block = model.embed_dim, model.patch_embed.proj, []
    nn.Conv2d(conv.in_channels, d, conv.kernel_size, conv.stride)
    for blk in blocks(model):
        hidden, bias = blk.mlp.fc1.out_features, blk.attn.qkv.bias is not None
        lins = [nn.Linear(d, 3 * d, bias=bias), nn.Linear(d, d), nn.Linear(d, hidden), nn.Linear(hidden, d),
                nn.Linear(d, width), nn.Linear(width, d)]
        for lin in lins[4:]:
            nn.init.xavier_uniform_(lin.weight)
            nn.init.normal_(lin.bias, std=1e-6)
        per_block.append(lins)
    head = nn.Linear(d, NOAH_BUILT_HEAD_CLASSES)
    trunc_normal_timm054_(torch.empty(model.pos_embed.shape), std=0.02)
    trunc_normal_timm054_(torch.empty(1, 1, d), std=0.02)  # cls_token
    for lin in [lin for lins in per_block for lin in lins] + [head]:
        trunc_normal_timm054_(lin.weight.data, std=0.02)
    return [(lins[4].weight.data, lins[5].weight.data) for lins in per_block]


def apply(model: nn.Module, width: int | None, reduction: float | None, placement: str, activation: str, init: str,
          dropout: float) -> None:
    d = model.embed_dim
    w = resolve_width(d, width, reduction)
    check_choice("placement", placement, PLACEMENTS)
    check_common(activation, init, dropout)
    if init == "noah_code" and placement == "attn_mlp":
        raise AdapterOptionError("adapter.init=noah_code draws as NOAH's model, one Adapter per block after the MLP: "
                                 "use adapter.placement=mlp_after_drop_path (NOAH's) or mlp")
    drawn = noah_code_weights(model, w) if init == "noah_code" else None  # NOAH's draws, in NOAH's order
    with torch.random.fork_rng(devices=[]) if drawn else contextlib.nullcontext():  # then the modules' own, dropped
        layers = [_insert(blk, placement, d, w, activation, init, dropout) for blk in blocks(model)]
    with torch.no_grad():
        for layer, (down, up) in zip(layers, drawn or []):
            layer.adapter.down.weight.copy_(down)
            layer.adapter.up.weight.copy_(up)


def _insert(blk: nn.Module, placement: str, d: int, w: int, activation: str, init: str,
            dropout: float) -> SerialAdapter:
    """Wrap ``blk``'s module(s) for ``placement``; returns the MLP side's adapter."""
    if placement == "attn_mlp":
        blk.attn = SerialAdapter(blk.attn, d, w, activation, init, dropout)
    if placement == "mlp_after_drop_path":  # timm's Block: x + drop_path2(ls2(mlp(norm2(x))))
        blk.drop_path2 = SerialAdapter(blk.drop_path2, d, w, activation, init, dropout)
        return blk.drop_path2
    blk.mlp = SerialAdapter(blk.mlp, d, w, activation, init, dropout)
    return blk.mlp
