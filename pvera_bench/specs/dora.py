"""DoRA's declaration; the layers are pvera_bench/adapters/dora.py."""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Adapter, declare, option

NORM_AXES = ("row", "column")
SCALINGS = ("alpha_over_r", "one")
INITS = ("peft", "pvera_code")


@dataclass(frozen=True)
class DoraOptions:
    r: int = option(8, ge=1, help="rank of the direction update")
    alpha: float = option(8.0, gt=0, help="the update is scaled by alpha / r (scaling=alpha_over_r)")
    norm_axis: str = option("row", choices=NORM_AXES, help="row: one norm per output row (PEFT); column: per input "
                                                           "column (the PVeRA code)")
    detach_norm: bool = option(True, help="true: the norm is a constant in backward (PEFT, DoRA paper section 4.3)")
    train_magnitude: bool = option(True, help="false: the magnitude stays at ||W|| (the PVeRA code)")
    scaling: str = option("alpha_over_r", choices=SCALINGS, help="alpha_over_r (PEFT) or one (the PVeRA code)")
    init: str = option("peft", choices=INITS, help="peft: A as nn.Linear, B zero; pvera_code: the PVeRA code's draws")


declare(Adapter("dora", DoraOptions, apply="pvera_bench.adapters.dora:apply",
                help="DoRA (Liu et al. 2024): a trained magnitude and a low-rank direction update of q and v"))
