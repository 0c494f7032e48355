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
  building the model; torch's sampler) or ``noah_code`` (the same drawn as NOAH's timm 0.5.4 draws
  it: :mod:`pvera_bench.truncnormal`).
"""

from __future__ import annotations

from typing import Literal

import math

import torch
from torch import nn

from ..truncnormal import trunc_normal_timm054_
from .base import AdapterLayer, AdapterOptionError, blocks, check_choice, check_positive, register


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)`` (NOAH's adapter activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "quick_gelu": QuickGELU}
INITS = ("lora", "pytorch", "noah", "noah_code")
PLACEMENTS = ("attn_mlp", "mlp", "mlp_after_drop_path")


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


@register("bottleneck")
def apply(model: nn.Module, width: int | None = 8, reduction: float | None = None,
          placement: Literal["attn_mlp", "mlp", "mlp_after_drop_path"] = "attn_mlp",
          activation: Literal["gelu", "relu", "quick_gelu"] = "gelu",
          init: Literal["lora", "pytorch", "noah", "noah_code"] = "lora", dropout: float = 0.0) -> None:
    d = model.embed_dim
    w = resolve_width(d, width, reduction)
    check_choice("placement", placement, PLACEMENTS)
    check_common(activation, init, dropout)
    for blk in blocks(model):
        if placement == "attn_mlp":
            blk.attn = SerialAdapter(blk.attn, d, w, activation, init, dropout)
        if placement == "mlp_after_drop_path":  # timm's Block: x + drop_path2(ls2(mlp(norm2(x))))
            blk.drop_path2 = SerialAdapter(blk.drop_path2, d, w, activation, init, dropout)
        else:
            blk.mlp = SerialAdapter(blk.mlp, d, w, activation, init, dropout)
