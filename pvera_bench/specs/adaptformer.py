"""AdaptFormer's declaration; the layers are pvera_bench/adapters/adaptformer.py."""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Adapter, declare, option
from .bottleneck import ACTIVATIONS, INIT_HELP, INITS, REDUCTION_HELP, WIDTH_HELP


@dataclass(frozen=True)
class AdaptFormerOptions:
    width: int | None = option(64, ge=1, help=WIDTH_HELP)
    reduction: float | None = option(None, help=REDUCTION_HELP)
    scale: float = option(0.1, help="the scale s of the adapter's output")
    learnable_scale: bool = option(False, help="true: s is a trained scalar starting at scale")
    activation: str = option("relu", choices=ACTIVATIONS, help="the bottleneck's activation")
    init: str = option("lora", choices=INITS, help=INIT_HELP)
    dropout: float = option(0.0, ge=0, lt=1, help="dropout after the activation, in training")
    inside_layer_scale: bool = option(False, help="true: the block's layer scale covers the adapter too (PVeRA code)")
    norm_input: bool = option(False, help="true: a trained LayerNorm on the adapter's input (V-PETL-Bench)")
    outside_drop_path: bool = option(False, help="true: the adapter is added after the block's drop path (V-PETL-Bench)")


declare(Adapter("adaptformer", AdaptFormerOptions, apply="pvera_bench.adapters.adaptformer:apply",
                help="AdaptFormer (Chen et al. 2022): a scaled bottleneck parallel to each block's MLP",
                no_peft_form="adaptformer has no PEFT form: PEFT has no tuner for a bottleneck MLP parallel to "
                             "the block's MLP (AdaptFormer); its trained weights stay in the run directory"))
