"""PVeRA's declaration; the layers are pvera_bench/adapters/pvera.py."""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Adapter, declare, option
from .vera import VeraOptions

INFERENCE_MODES = ("mean", "fixed", "mc")


@dataclass(frozen=True)
class PveraOptions(VeraOptions):
    """VeRA's options (the shared projections, their init and seed, the per-candidate draws), with
    A holding mu and logvar, and the latent's KL weight and inference mode."""

    r: int = option(256, ge=1, help="rank of the shared frozen random projections (A holds 2r columns: mu and logvar)")
    beta: float = option(1e6, gt=0, help="the loss adds KL / beta")
    inference: str = option("mean", choices=INFERENCE_MODES,
                            help="mean: z = mu; fixed: z = mu + exp(logvar / 2); mc: sampled, mc_samples averaged")
    mc_samples: int = option(8, ge=1, used_when={"inference": ("mc",)},
                             help="predictive distributions averaged at evaluation (inference=mc only)")


declare(Adapter("pvera", PveraOptions, apply="pvera_bench.adapters.pvera:apply",
                help="PVeRA (arXiv 2512.07703): VeRA with a sampled latent and a KL term"))
