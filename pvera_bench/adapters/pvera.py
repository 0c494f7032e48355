"""PVeRA: probabilistic VeRA (arXiv 2512.07703) on the q and v projections.

As VeRA, but ``A_k`` is d x 2r and ``lambda_d`` has 2r entries per projection:
``h = (x A_k) * lambda_d_k``, ``mu = h[..., :r]``, ``logvar = h[..., r:]``. Training samples
``z = mu + eps * exp(logvar / 2)`` (fresh eps per element and forward) and records the KL term
``mean(-0.5 * (1 + logvar - mu^2 - exp(logvar)))``; inference uses ``mean`` (z = mu,
deterministic and mergeable), ``fixed`` (z = mu + exp(logvar / 2)) or ``mc`` (sampled; the
evaluator averages ``mc_samples`` predictive distributions, with noise drawn per example from a
generator of the evaluation pass, see ``adapters.example_noise``, so it depends neither on the
batch size nor on training's random state). ``delta_k = alpha * (z B_k) * lambda_b_k``.
The block's KL is the mean of its q and v terms, summed over blocks; the loss adds ``KL / beta``.
"""

from __future__ import annotations


import torch
from torch import nn

from ..specs.pvera import INFERENCE_MODES
from .qkv import SharedProjections
from .vera import VeraQV, apply_vera


class _SampleKL(torch.autograd.Function):
    """Training's latent and KL term in one node, from ``xa = x [A_q | A_v]`` (..., 2, 2r) and
    ``lambda_d``: ``h = xa * lambda_d = [mu | logvar]`` per projection,
    ``z = mu + eps * exp(logvar / 2)`` (eps ~ N(0, I), drawn as ``randn_like``) and
    ``KL = mean(-0.5 * (1 + logvar - mu^2 - exp(logvar)))``, computed as the equal
    ``0.5 * mean(mu^2 + expm1(logvar) - logvar)`` (no cancellation near logvar = 0).

    Backward is the analytic gradient, with ``n`` the number of latent entries:
    ``dmu = dz + dKL * mu / n``, ``dlogvar = 0.5 * (dz * eps * std + dKL * expm1(logvar) / n)``,
    ``dxa = dh * lambda_d``, ``dlambda_d = sum(dh * xa)``. It keeps ``xa`` and ``eps * std`` for
    backward (``h`` is recomputed), where the chain of autograd ops it replaces kept several more
    tensors of this size and made a pass over memory for each op.
    """

    @staticmethod
    def forward(ctx, xa, ld, r):
        h = xa * ld
        mu, logvar = h[..., :r], h[..., r:]
        std = torch.exp(0.5 * logvar)
        noise = torch.randn_like(std).mul_(std)
        z = mu + noise
        t = torch.expm1(logvar).sub_(logvar).addcmul_(mu, mu)
        kl = t.mean() * 0.5
        ctx.r = r
        ctx.save_for_backward(xa, ld, noise)
        return z, kl

    @staticmethod
    def backward(ctx, gz, gkl):
        xa, ld, noise = ctx.saved_tensors
        r = ctx.r
        h = xa * ld
        mu, logvar = h[..., :r], h[..., r:]
        c = gkl / mu.numel()
        gh = torch.empty_like(h)
        torch.addcmul(gz, mu, c, out=gh[..., :r])
        glv = gh[..., r:]
        torch.expm1(logvar, out=glv)
        glv.mul_(0.5 * c).addcmul_(gz, noise, value=0.5)
        gxa = gh * ld if ctx.needs_input_grad[0] else None
        gld = None
        if ctx.needs_input_grad[1]:
            n = ld.numel()
            gld = torch.linalg.vecdot(gh.reshape(-1, n), xa.reshape(-1, n), dim=0).view(ld.shape)
        return gxa, gld, None


class PveraQV(VeraQV):
    def __init__(self, base: nn.Linear, shared: SharedProjections, r: int, alpha: float,
                 lambda_d_init: float | None, beta: float, inference: str, mc_samples: int,
                 init: str = "pvera_code", generator: torch.Generator | None = None,
                 lambda_d_values: tuple[float, float] | None = None) -> None:
        super().__init__(base, shared, r, alpha, lambda_d_init, latent=2, init=init, generator=generator,
                         lambda_d_values=lambda_d_values)
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

    def _latent(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            xa = (x @ self.shared.A).unflatten(-1, (2, -1))  # (..., 2, 2r)
            z, self.kl = _SampleKL.apply(xa, self.lambda_d.view(2, -1).to(xa.dtype), self.r)
            return z
        h = self._codes(x)  # (..., 2, 2r)
        mu, logvar = h[..., : self.r], h[..., self.r :]
        if self.inference == "mean":
            z = mu
        elif self.inference == "fixed":
            z = mu + torch.exp(0.5 * logvar)
        else:  # mc: per-example noise in an evaluation pass (``adapters.example_noise``)
            eps = self.eval_noise.draw(mu) if self.eval_noise is not None else torch.randn_like(mu)
            z = torch.addcmul(mu, eps, torch.exp(0.5 * logvar))
        return z

    def aux_loss(self) -> torch.Tensor | None:
        if not self.training or self.kl is None:
            return None
        kl, self.kl = self.kl, None
        return kl / self.beta


def apply(model: nn.Module, r: int, alpha: float, init: str, lambda_d_init: float | None, projection_seed: int | None,
          beta: float, inference: str, mc_samples: int, draws: str) -> None:
    """Initialisation (``init``, ``lambda_d_init``, ``projection_seed``, ``draws``) as VeRA's, see
    :mod:`pvera_bench.adapters.vera`; A holds 2r columns per projection ([mu | logvar])."""
    apply_vera(model, "pvera_shared", PveraQV, 2, draws, projection_seed, r=r, alpha=alpha, lambda_d_init=lambda_d_init,
               beta=beta, inference=inference, mc_samples=mc_samples, init=init)
