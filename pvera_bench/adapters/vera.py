"""VeRA on the q and v projections (Kopiczko et al. 2024).

``delta_k = alpha * ((x A_k) * lambda_d_k) B_k * lambda_b_k`` for k in (q, v), with ``A_k``
(d x r) and ``B_k`` (r x d) frozen random matrices shared by all blocks (buffers); only
``lambda_d`` (r) and ``lambda_b`` (d) train, per projection.

``init`` chooses how the frozen projections and ``lambda_d`` start (``lambda_b`` is always 0):

- ``pvera_code`` (default): as the PVeRA paper's code (leofillioux/pvera, models/models.py and
  models/adapters/vera.py): A and B uniform with bounds sqrt(6 / a_cols) and sqrt(6 / d), and
  ``lambda_d`` one U(1e-5, 1) scalar per projection per block, repeated over the vector;
- ``peft``: PEFT's VeRA: A and B bounds sqrt(6 / d) and sqrt(6 / r), ``lambda_d`` 0.1.

Everything is drawn from the run's seed (the global RNG, which the run seeds), or, when
``projection_seed`` is set, from a generator seeded with it. ``lambda_d_init`` (a number)
replaces the init's ``lambda_d`` by that constant.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .base import AdapterOptionError, check_choice, register
from .qkv import PROJECTION_INITS, QVAdapter, SharedProjections, add_qv, replace_qkv, share

LAMBDA_D_RANGE = (1e-5, 1.0)  # the PVeRA code's np.random.uniform(1e-5, 1) (models/adapters/vera.py)


def projection_generator(projection_seed: int | None) -> torch.Generator | None:
    """A CPU generator seeded with ``projection_seed``, or None (the global RNG, seeded by the run)."""
    return None if projection_seed is None else torch.Generator().manual_seed(int(projection_seed))


def check_vera_options(init: str, lambda_d_init: float | None) -> None:
    check_choice("init", init, PROJECTION_INITS)
    if lambda_d_init is not None and (isinstance(lambda_d_init, bool) or not isinstance(lambda_d_init, (int, float))):
        raise AdapterOptionError(f"adapter.lambda_d_init={lambda_d_init!r} is not valid; use a number, or null for "
                                 f"the init's own")


class VeraQV(QVAdapter):
    vector_params = ("lambda_d", "lambda_b")  # per-projection vectors, stored (2, ...) or (d,)
    def __init__(self, base: nn.Linear, shared: SharedProjections, r: int, alpha: float,
                 lambda_d_init: float | None, latent: int = 1, init: Literal["pvera_code", "peft"] = "pvera_code",
                 generator: torch.Generator | None = None) -> None:
        super().__init__(base)
        object.__setattr__(self, "shared", shared)  # a reference, not a submodule: held once by the model
        self.r, self.alpha = int(r), float(alpha)
        cols = latent * self.r
        if lambda_d_init is not None:
            ld = torch.full((2 * cols,), float(lambda_d_init))
        elif init == "pvera_code":  # one scalar per projection (q, v) of this block
            ld = torch.empty(2).uniform_(*LAMBDA_D_RANGE, generator=generator).repeat_interleave(cols)
        else:  # peft
            ld = torch.full((2 * cols,), 0.1)
        self.lambda_d = nn.Parameter(ld)
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
def apply(model: nn.Module, r: int = 256, alpha: float = 16.0, init: Literal["pvera_code", "peft"] = "pvera_code",
          lambda_d_init: float | None = None, projection_seed: int | None = None) -> None:
    check_vera_options(init, lambda_d_init)
    d = model.embed_dim
    g = projection_generator(projection_seed)
    shared = share(model, "vera_shared", SharedProjections(d, r, r, init, g))
    replace_qkv(model, lambda qkv: VeraQV(qkv, shared, r, alpha, lambda_d_init, init=init, generator=g))
