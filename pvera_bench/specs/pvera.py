"""PVeRA's declaration; the layers are pvera_bench/adapters/pvera.py."""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Adapter, declare, option
from .common import DRAWS, DRAWS_HELP
from .vera import PROJECTION_INIT_HELP, PROJECTION_INITS

INFERENCE_MODES = ("mean", "fixed", "mc")


@dataclass(frozen=True)
class PveraOptions:
    r: int = option(256, ge=1, help="rank of the shared frozen random projections (A holds 2r columns: mu and logvar)")
    alpha: float = option(16.0, gt=0, help="the update is scaled by alpha")
    init: str = option("pvera_code", choices=PROJECTION_INITS, help=PROJECTION_INIT_HELP)
    lambda_d_init: float | None = option(None, help="a constant start for lambda_d (null: the init's)")
    projection_seed: int | None = option(None, ge=0, help="seed of the frozen projections (null: the run's RNG)")
    beta: float = option(1e6, gt=0, help="the loss adds KL / beta")
    inference: str = option("mean", choices=INFERENCE_MODES,
                            help="mean: z = mu; fixed: z = mu + exp(logvar / 2); mc: sampled, mc_samples averaged")
    mc_samples: int = option(8, ge=1, used_when={"inference": ("mc",)},
                             help="predictive distributions averaged at evaluation (inference=mc only)")
    draws: str = option("run", choices=DRAWS, help=DRAWS_HELP)


declare(Adapter("pvera", PveraOptions, apply="pvera_bench.adapters.pvera:apply",
                help="PVeRA (arXiv 2512.07703): VeRA with a sampled latent and a KL term"))
