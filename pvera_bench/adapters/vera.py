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

``draws``: ``run`` (the above: every grid candidate gets the same draws) or ``pvera_code``: grid
candidate j gets the PVeRA code's j-th draws, bit for bit (recipe=pvera_paper_exact; the candidate
comes from :func:`pvera_bench.adapters.building`): its projections are the j-th of the code's
``local_seed(seed)`` loop over the candidates (models/models.py, :func:`code_projections`), and its
``lambda_d`` the code's ``np.random.uniform(1e-5, 1)`` draws from numpy's generator seeded with the
run's seed, taken block by block, candidate by candidate, q then v (models/adapters/vera.py).
"""

from __future__ import annotations


import numpy as np
import torch
from torch import nn

from ..specs.common import DRAWS
from .base import AdapterOptionError, blocks, check_choice, grid_draw
from .qkv import PROJECTION_INITS, QVAdapter, SharedProjections, add_qv, code_projections, replace_qkv, share

LAMBDA_D_RANGE = (1e-5, 1.0)  # the PVeRA code's np.random.uniform(1e-5, 1) (models/adapters/vera.py)


def projection_generator(projection_seed: int | None) -> torch.Generator | None:
    """A CPU generator seeded with ``projection_seed``, or None (the global RNG, seeded by the run)."""
    return None if projection_seed is None else torch.Generator().manual_seed(int(projection_seed))


def check_vera_options(init: str, lambda_d_init: float | None, draws: str = "run",
                       projection_seed: int | None = None) -> None:
    check_choice("init", init, PROJECTION_INITS)
    check_choice("draws", draws, DRAWS)
    if draws == "pvera_code" and (init != "pvera_code" or lambda_d_init is not None or projection_seed is not None):
        raise AdapterOptionError("adapter.draws=pvera_code draws as the PVeRA code: it needs adapter.init=pvera_code, "
                                 "adapter.lambda_d_init=null and adapter.projection_seed=null")
    if lambda_d_init is not None and (isinstance(lambda_d_init, bool) or not isinstance(lambda_d_init, (int, float))):
        raise AdapterOptionError(f"adapter.lambda_d_init={lambda_d_init!r} is not valid; use a number, or null for "
                                 f"the init's own")


class VeraQV(QVAdapter):
    vector_params = ("lambda_d", "lambda_b")  # per-projection vectors, stored (2, ...) or (d,)
    def __init__(self, base: nn.Linear, shared: SharedProjections, r: int, alpha: float,
                 lambda_d_init: float | None, latent: int = 1, init: str = "pvera_code",
                 generator: torch.Generator | None = None, lambda_d_values: tuple[float, float] | None = None) -> None:
        super().__init__(base)
        object.__setattr__(self, "shared", shared)  # a reference, not a submodule: held once by the model
        self.r, self.alpha = int(r), float(alpha)
        cols = latent * self.r
        if lambda_d_values is not None:  # the PVeRA code: torch.ones(rank) * np.random.uniform(1e-5, 1), q then v
            ld = torch.cat([torch.ones(cols) * v for v in lambda_d_values])
        elif lambda_d_init is not None:
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


def code_draws(model: nn.Module, r: int, latent: int) -> tuple[tuple, list[tuple[float, float]]]:
    """The PVeRA code's draws for the candidate being built (``draws: pvera_code``): the projections
    (A, B) and one (q, v) pair of ``lambda_d`` values per block."""
    c = grid_draw()
    ranks = [int(o.get("r", r)) for o in c.options]
    if ranks[c.index] != int(r):
        raise ValueError(f"candidate {c.index}: rank {r} is not the grid's {ranks[c.index]}")
    given = code_projections(model.embed_dim, [(latent * k, k) for k in ranks], c.index, c.seed)
    rs = np.random.RandomState(int(c.seed) % 2**32)  # the code: seed_everything(seed) -> np.random.seed(seed)
    n, values = len(ranks), []
    for _ in blocks(model):
        drawn = [(rs.uniform(1e-5, 1), rs.uniform(1e-5, 1)) for _ in range(n)]  # candidate by candidate, q then v
        values.append(drawn[c.index])
    return given, values


def apply_vera(model: nn.Module, shared_name: str, layer, latent: int, draws: str, projection_seed, **kw) -> None:
    """VeRA and PVeRA: the shared projections, then one ``layer(qkv, shared, **kw)`` per block
    (``kw`` holds the layer's options: r, alpha, init, lambda_d_init, ...)."""
    r, init, lambda_d_init = kw["r"], kw["init"], kw["lambda_d_init"]
    check_vera_options(init, lambda_d_init, draws, projection_seed)
    d = model.embed_dim
    if draws == "pvera_code":
        given, values = code_draws(model, r, latent)
        shared = share(model, shared_name, SharedProjections(d, latent * r, r, init, given=given))
        it = iter(values)
        replace_qkv(model, lambda qkv: layer(qkv, shared, lambda_d_values=next(it), **kw))
        return
    g = projection_generator(projection_seed)
    shared = share(model, shared_name, SharedProjections(d, latent * r, r, init, g))
    replace_qkv(model, lambda qkv: layer(qkv, shared, generator=g, **kw))


def apply(model: nn.Module, r: int, alpha: float, init: str, lambda_d_init: float | None, projection_seed: int | None,
          draws: str) -> None:
    apply_vera(model, "vera_shared", VeraQV, 1, draws, projection_seed, r=r, alpha=alpha, lambda_d_init=lambda_d_init,
               init=init)
