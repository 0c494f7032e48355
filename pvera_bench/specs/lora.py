"""LoRA's declaration; the layers are pvera_bench/adapters/lora.py."""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Adapter, declare, option
from .common import DRAWS, DRAWS_HELP

TARGETS = ("qv", "qkv")
INITS = ("peft", "pvera_code", "noah", "noah_code")


@dataclass(frozen=True)
class LoraOptions:
    r: int = option(8, ge=1, help="rank of each update A B")
    alpha: float = option(8.0, gt=0, help="the update is scaled by alpha / r")
    targets: str = option("qv", choices=TARGETS, help="qv: q and v are adapted (LoRA, PEFT); qkv: q, k and v (NOAH)")
    dropout: float = option(0.0, ge=0, lt=1, help="dropout on LoRA's input, in training only")
    fused: bool = option(False, help="true: one rank-r update of the fused qkv weight (NOAH's LoRA)")
    init: str = option("peft", choices=INITS, help="peft: A as nn.Linear, B zero; pvera_code: A ~ N(0, 1/r), B zero; "
                                                   "noah: both truncated normal std 0.02 (torch's sampler); noah_code: the same with timm 0.5.4's "
                                                   "sampler, NOAH's draws")
    draws: str = option("run", choices=DRAWS, help=DRAWS_HELP)


declare(Adapter("lora", LoraOptions, apply="pvera_bench.adapters.lora:apply",
                help="LoRA (Hu et al. 2022): low-rank updates of the attention projections"))
