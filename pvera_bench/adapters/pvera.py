"""PVeRA: probabilistic VeRA (arXiv 2512.07703) on the q and v projections.

As VeRA, but ``A_k`` is d x 2r and ``lambda_d`` has 2r entries per projection:
``h = (x A_k) * lambda_d_k``, ``mu = h[..., :r]``, ``logvar = h[..., r:]``. Training samples
``z = mu + eps * exp(logvar / 2)`` (fresh eps per element and forward) and records the KL term
``mean(-0.5 * (1 + logvar - mu^2 - exp(logvar)))``; inference uses ``mean`` (z = mu,
deterministic and mergeable), ``fixed`` (z = mu + exp(logvar / 2)) or ``mc`` (sampled; the
evaluator averages ``mc_samples`` predictive distributions). ``delta_k = alpha * (z B_k) * lambda_b_k``.
The block's KL is the mean of its q and v terms, summed over blocks; the loss adds ``KL / beta``.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import register
from .qkv import SharedProjections, replace_qkv, share
from .vera import VeraQV

INFERENCE_MODES = ("mean", "fixed", "mc")


class PveraQV(VeraQV):
    def __init__(self, base: nn.Linear, shared: SharedProjections, r: int, alpha: float,
                 lambda_d_init: float, beta: float, inference: str, mc_samples: int) -> None:
        super().__init__(base, shared, r, alpha, lambda_d_init, latent=2)
        self.beta = float(beta)
        self.set_inference(inference, mc_samples)
        self.kl: torch.Tensor | None = None  # the KL term of the last training forward

    def set_inference(self, mode: str, mc_samples: int = 1) -> None:
        if mode not in INFERENCE_MODES:
            raise ValueError(f"unknown PVeRA inference mode {mode!r}; valid: {', '.join(INFERENCE_MODES)}")
        if self.merged and mode != "mean":
            raise RuntimeError("a merged PVeRA layer can only run in mean mode; unmerge it first")
        if mode == "mc" and int(mc_samples) < 1:
            raise ValueError("PVeRA Monte-Carlo inference needs mc_samples >= 1")
        self.inference, self.mc_samples = mode, int(mc_samples)

    @property
    def eval_samples(self) -> int:
        return self.mc_samples if self.inference == "mc" else 1

    def can_merge(self) -> bool:
        return self.inference == "mean"

    def updates(self, x: torch.Tensor, out: torch.Tensor | None = None) -> list[torch.Tensor]:
        h = self._codes(x)  # (..., 2, 2r)
        mu, logvar = h[..., : self.r], h[..., self.r :]
        if self.training:
            std = torch.exp(0.5 * logvar)
            z = torch.addcmul(mu, torch.randn_like(std), std)
            self.kl = (-0.5 * (1 + logvar - mu.square() - std.square())).mean()
        elif self.inference == "mean":
            z = mu
        elif self.inference == "fixed":
            z = mu + torch.exp(0.5 * logvar)
        else:  # mc
            z = torch.addcmul(mu, torch.randn_like(mu), torch.exp(0.5 * logvar))
        return self._expand(z)

    def aux_loss(self) -> torch.Tensor | None:
        if not self.training or self.kl is None:
            return None
        kl, self.kl = self.kl, None
        return kl / self.beta

    def delta_weight(self) -> torch.Tensor:
        # mean mode: z = mu uses the first r columns of each projection's A and lambda_d
        a = self.shared.A.view(self.dim, 2, 2 * self.r)[..., : self.r].transpose(0, 1)
        return self._delta_from(a, self.lambda_d.view(2, 2 * self.r)[:, : self.r])


@register("pvera")
def apply(model: nn.Module, r: int = 256, alpha: float = 16.0, lambda_d_init: float = 0.1,
          projection_seed: int = 0, beta: float = 1e6, inference: str = "mean",
          mc_samples: int = 8) -> None:
    d = model.embed_dim
    shared = share(model, "pvera_shared", SharedProjections(d, 2 * r, r, projection_seed))
    replace_qkv(model, lambda qkv: PveraQV(qkv, shared, r, alpha, lambda_d_init, beta, inference, mc_samples))
