"""BitFit's declaration; the function is pvera_bench/adapters/bitfit.py."""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Adapter, declare


@dataclass(frozen=True)
class BitFitOptions:
    pass


declare(Adapter("bitfit", BitFitOptions, apply="pvera_bench.adapters.bitfit:apply",
                help="BitFit (Ben Zaken et al. 2022): the backbone's biases train",
                no_peft_form="bitfit has no PEFT form (none exact): PEFT's bias tuner (BEFT, peft/tuners/beft) adds a "
                             "bias to nn.Linear layers only, and BitFit also trains the LayerNorm and patch-embedding "
                             "biases"))
