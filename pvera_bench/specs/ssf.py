"""SSF's declaration; the layers are pvera_bench/adapters/ssf.py."""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Adapter, declare


@dataclass(frozen=True)
class SsfOptions:
    pass


declare(Adapter("ssf", SsfOptions, apply="pvera_bench.adapters.ssf:apply",
                help="SSF (Lian et al. 2022): a scale and shift per channel after each operation",
                no_peft_form="ssf has no PEFT form: PEFT has no scale-and-shift tuner; SSF merges into the frozen "
                             "weights (the run's weights, merged, are a plain timm ViT)"))
