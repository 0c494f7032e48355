"""VeRA on the q and v projections (Kopiczko et al. 2024).

``delta_k = alpha * ((x A_k) * lambda_d_k) B_k * lambda_b_k`` for k in (q, v), with ``A_k``
(d x r) and ``B_k`` (r x d) frozen random matrices shared by all blocks (buffers, from
``projection_seed``); only ``lambda_d`` (r) and ``lambda_b`` (d) train, per projection.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import register
from .qkv import QVAdapter, SharedProjections, add_qv, replace_qkv, share


class VeraQV(QVAdapter):
    def __init__(self, base: nn.Linear, shared: SharedProjections, r: int, alpha: float,
                 lambda_d_init: float, latent: int = 1) -> None:
        super().__init__(base)
        object.__setattr__(self, "shared", shared)  # a reference, not a submodule: held once by the model
        self.r, self.alpha = int(r), float(alpha)
        self.lambda_d = nn.Parameter(torch.full((2 * latent * self.r,), float(lambda_d_init)))
        self.lambda_b = nn.Parameter(torch.zeros(2, self.dim))

    def _codes(self, x: torch.Tensor) -> torch.Tensor:
        """``(x [A_q | A_v]) * lambda_d``, viewed as ``(..., 2, cols)``."""
        xa = x @ self.shared.A
        return (xa * self.lambda_d.to(xa.dtype)).unflatten(-1, (2, -1))  # stays in autocast's dtype

    def _latent(self, x: torch.Tensor) -> torch.Tensor:
        """The codes ``z`` (..., 2, r) that ``B`` expands: VeRA's are ``(x A) * lambda_d``."""
        return self._codes(x)

    def add_updates(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out_k += alpha * (z_k B_k) * lambda_b_k`` for the q and v codes ``z``."""
        t = out.dtype
        return add_qv(out, self._latent(x).to(t), self.shared.B.to(t), (self.lambda_b * self.alpha).to(t))

    def delta_weight(self) -> torch.Tensor:
        """(2, d_out, d_in). The codes are the first r of each projection: all of VeRA's, and
        PVeRA's mu (its mean mode, the only one that merges)."""
        a = self.shared.A.view(self.dim, 2, -1)[..., : self.r].transpose(0, 1)  # (2, d, r)
        ld = self.lambda_d.view(2, -1)[:, : self.r]  # (2, r)
        b = self.shared.B * (self.lambda_b * self.alpha)[:, None, :]  # (2, r, d_out)
        return ((a * ld[:, None, :]) @ b).transpose(1, 2)


@register("vera")
def apply(model: nn.Module, r: int = 256, alpha: float = 16.0, lambda_d_init: float = 0.1,
          projection_seed: int = 0) -> None:
    d = model.embed_dim
    shared = share(model, "vera_shared", SharedProjections(d, r, r, projection_seed))
    replace_qkv(model, lambda qkv: VeraQV(qkv, shared, r, alpha, lambda_d_init))
