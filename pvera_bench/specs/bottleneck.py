"""The bottleneck adapter's declaration; the layers are pvera_bench/adapters/bottleneck.py."""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Adapter, declare, option

ACTIVATIONS = ("gelu", "relu", "quick_gelu")
INITS = ("lora", "pytorch", "noah", "noah_code")
PLACEMENTS = ("attn_mlp", "mlp", "mlp_after_drop_path")
WIDTH_HELP = "bottleneck width (null: int(d / reduction))"
REDUCTION_HELP = "width = int(d / reduction) when width is null"
INIT_HELP = ("lora: Down as nn.Linear, Up and biases zero; pytorch: nn.Linear's defaults; noah: truncated normal "
             "0.02; noah_code: NOAH's own draws (timm 0.5.4's sampler, NOAH's model construction replayed)")
NO_PEFT = "PEFT has no tuner for a bottleneck MLP"


@dataclass(frozen=True)
class BottleneckOptions:
    width: int | None = option(8, ge=1, help=WIDTH_HELP)
    reduction: float | None = option(None, help=REDUCTION_HELP)
    placement: str = option("attn_mlp", choices=PLACEMENTS, help="attn_mlp: after attention and MLP (Houlsby); mlp: "
                                                                 "after the MLP; mlp_after_drop_path: NOAH's")
    activation: str = option("gelu", choices=ACTIVATIONS, help="the bottleneck's activation")
    init: str = option("lora", choices=INITS, help=INIT_HELP)
    dropout: float = option(0.0, ge=0, lt=1, help="dropout after the activation, in training")


declare(Adapter("bottleneck", BottleneckOptions, apply="pvera_bench.adapters.bottleneck:apply",
                help="bottleneck adapters (Houlsby et al. 2019) after each block's attention and/or MLP",
                no_peft_form="bottleneck has no PEFT form: PEFT has no serial bottleneck (Houlsby) adapter; its "
                             "trained weights stay in the run directory"))
