"""Linear probing's declaration; the function is pvera_bench/adapters/linear_probe.py."""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Adapter, declare


@dataclass(frozen=True)
class LinearProbeOptions:
    pass


declare(Adapter("linear_probe", LinearProbeOptions, apply="pvera_bench.adapters.linear_probe:apply", trains=False,
                help="linear probing: the backbone stays frozen, only the head trains",
                no_peft_form="linear_probe has no PEFT form: it trains only the head, and PEFT builds no checkpoint "
                             "without an adapter (an empty target_modules is refused); load the head straight into "
                             "timm's ViT (num_classes=K) from the run's weights instead"))
