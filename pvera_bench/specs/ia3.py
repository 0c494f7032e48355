"""IA3's declaration; the layers are pvera_bench/adapters/ia3.py."""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Adapter, declare


@dataclass(frozen=True)
class Ia3Options:
    pass


declare(Adapter("ia3", Ia3Options, apply="pvera_bench.adapters.ia3:apply",
                help="IA3 (Liu et al. 2022): learned vectors rescale k, v and the MLP's hidden activations"))
