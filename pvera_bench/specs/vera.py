"""VeRA's declaration; the layers are pvera_bench/adapters/vera.py."""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Adapter, declare, option
from .common import DRAWS, DRAWS_HELP

PROJECTION_INITS = ("pvera_code", "peft")
PROJECTION_INIT_HELP = "pvera_code: the PVeRA code's projection bounds and lambda_d; peft: PEFT's VeRA init"


@dataclass(frozen=True)
class VeraOptions:
    r: int = option(256, ge=1, help="rank of the shared frozen random projections")
    alpha: float = option(16.0, gt=0, help="the update is scaled by alpha")
    init: str = option("pvera_code", choices=PROJECTION_INITS, help=PROJECTION_INIT_HELP)
    lambda_d_init: float | None = option(None, help="a constant start for lambda_d (null: the init's)")
    projection_seed: int | None = option(None, ge=0, help="seed of the frozen projections (null: the run's RNG)")
    draws: str = option("run", choices=DRAWS, help=DRAWS_HELP)


declare(Adapter("vera", VeraOptions, apply="pvera_bench.adapters.vera:apply",
                help="VeRA (Kopiczko et al. 2024): trained scaling vectors around shared frozen random projections"))
