"""LoRA on the attention projections: ``delta_k = (alpha / r) * dropout(x) A_k B_k``.

Options (the keyword arguments of :func:`apply`):

- ``targets``: ``qv`` (q and v, the LoRA paper's and PEFT's usual choice) or ``qkv`` (q, k and v,
  as NOAH runs it);
- ``fused``: False gives each projection its own ``A_k`` (d x r) and ``B_k`` (r x d); True gives
  one rank-r update of the whole fused qkv weight, ``A`` (d x r) shared and ``B`` (r x 3d) = the
  ``B_k`` side by side: NOAH's LoRA (ZhangYuanhan-AI/NOAH, model/supernet_vision_transformer_timm.py,
  ``LoRA_a`` Linear(d, r), ``LoRA_b`` Linear(r, 3d));
- ``dropout``: on LoRA's input, in training only (PEFT's ``lora_dropout``, NOAH's ``LoRA_drop``);
- ``init``: ``peft`` (A uniform +-1/sqrt(d) = ``kaiming_uniform_(a=sqrt(5))`` as nn.Linear and
  PEFT, B zero), ``pvera_code`` (A normal with std 1/sqrt(r), B zero: leofillioux/pvera,
  models/adapters/lora.py) or ``noah`` (A and B both truncated normal, std 0.02: NOAH's model
  re-initialises every nn.Linear, LoRA's included, with ``_init_vit_weights`` after building it,
  so its B does not start at zero; torch's sampler) or ``noah_code`` (the same drawn as NOAH's timm 0.5.4
  draws it: :mod:`pvera_bench.truncnormal`);
- ``draws``: ``run`` (A drawn from the global RNG, block after block) or ``pvera_code`` (with
  ``init=pvera_code``): as the PVeRA code (models/models.py, lora branch), every block reseeded
  with the run's seed (``local_seed(self.seed)``), then each grid candidate's ``randn(d, r) / sqrt(r)``
  for q then v, in grid order: candidate j's A is the j-th draw, the same in every block.
"""

from __future__ import annotations


import torch
from torch import nn

from ..specs.common import DRAWS
from ..specs.lora import INITS, TARGETS as TARGET_NAMES
from ..truncnormal import trunc_normal_timm054_
from .base import AdapterOptionError, check_choice, check_positive, grid_draw
from .qkv import QV, QVAdapter, add_qv, replace_qkv

TARGETS = dict(zip(TARGET_NAMES, (QV, (0, 1, 2))))  # the projections (0 q, 1 k, 2 v) each target adapts


class LoraQV(QVAdapter):
    def __init__(self, base: nn.Linear, r: int, alpha: float, targets: str = "qv", dropout: float = 0.0,
                 fused: bool = False, init: str = "peft") -> None:
        super().__init__(base)
        d = self.dim
        self.ks = TARGETS[targets]
        n = len(self.ks)
        self.r, self.scale, self.fused = int(r), float(alpha) / float(r), bool(fused)
        # One (d, n r) matrix holds the A_k side by side: one matmul for every projection.
        a = torch.empty(d, self.r if self.fused else n * self.r)
        b = torch.zeros(n, self.r, d)
        a = a.zero_() if init is None else a
        if init is None:  # the caller fills A and B (DoRA's pvera_code init): no draw from the RNG
            pass
        elif init == "peft":
            bound = 1.0 / d**0.5  # kaiming_uniform_(a=sqrt(5)) on an (r, d) weight, as nn.Linear and PEFT
            a.uniform_(-bound, bound)
        elif init == "pvera_code":
            a.normal_(0.0, 1.0 / self.r**0.5)
        else:  # noah: trunc_normal_(std=.02) cut at +-2 by torch's sampler; noah_code: timm 0.5.4's, NOAH's draws
            draw = trunc_normal_timm054_ if init == "noah_code" else nn.init.trunc_normal_
            draw(a, std=0.02, a=-2.0, b=2.0)
            draw(b, std=0.02, a=-2.0, b=2.0)
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(b)
        self.dropout = nn.Dropout(float(dropout)) if dropout else nn.Identity()

    def _codes(self, x: torch.Tensor) -> torch.Tensor:
        """``dropout(x) A`` as ``(..., n, r)`` (per projection) or ``(..., 1, r)`` (fused: shared)."""
        return (self.dropout(x) @ self.lora_A).unflatten(-1, (-1, self.r))

    def updates(self, x: torch.Tensor, out: torch.Tensor | None = None) -> list[torch.Tensor]:
        h = self._codes(x)
        return [(h[..., 0 if self.fused else i, :] @ self.lora_B[i]) * self.scale for i in range(len(self.ks))]

    def add_updates(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        h = self._codes(x) * self.scale  # scaling the r-wide codes, not the d-wide update
        return add_qv(out, h.to(out.dtype), self.lora_B.to(out.dtype), ks=self.ks)

    def delta_weight(self) -> torch.Tensor:
        a = self.lora_A.view(self.dim, -1, self.r).transpose(0, 1)  # (n or 1, d_in, r)
        return (a @ self.lora_B).transpose(1, 2) * self.scale  # (n, d_out, d_in)


def code_lora_a(d: int, r: int) -> torch.Tensor:
    """Candidate j's ``[A_q | A_v]`` (d, 2r) as the PVeRA code draws it in a block: torch seeded with
    the run's seed, then for each candidate in grid order ``randn(in_dim, rank) * std`` for q and v,
    ``std = 1 / torch.sqrt(torch.tensor(rank).float())`` (models/adapters/lora.py)."""
    c = grid_draw()
    ranks = [int(o.get("r", r)) for o in c.options]
    if ranks[c.index] != int(r):
        raise ValueError(f"candidate {c.index}: rank {r} is not the grid's {ranks[c.index]}")
    g = torch.Generator().manual_seed(int(c.seed))
    for k in ranks[: c.index + 1]:
        std = 1 / torch.sqrt(torch.tensor(k).float())
        a_q = torch.randn(d, k, generator=g) * std
        a_v = torch.randn(d, k, generator=g) * std
    return torch.cat((a_q, a_v), dim=1)


def check_lora_options(r, alpha, targets, dropout, fused, init, draws="run") -> None:
    check_positive("r", r)
    check_choice("targets", targets, tuple(TARGETS))
    check_positive("dropout", dropout, allow_zero=True, upper=1.0)
    check_choice("fused", fused, (False, True))
    check_choice("init", init, INITS)
    check_choice("draws", draws, DRAWS)
    if draws == "pvera_code" and (init != "pvera_code" or targets != "qv" or fused):
        raise AdapterOptionError("adapter.draws=pvera_code draws as the PVeRA code: it needs adapter.init=pvera_code, "
                                 "adapter.targets=qv and adapter.fused=false")


def apply(model: nn.Module, r: int, alpha: float, targets: str, dropout: float, fused: bool, init: str, draws: str) -> None:
    check_lora_options(r, alpha, targets, dropout, fused, init, draws)

    def make(qkv: nn.Linear) -> LoraQV:
        if draws == "run":
            return LoraQV(qkv, r, alpha, targets, dropout, fused, init)
        layer = LoraQV(qkv, r, alpha, targets, dropout, fused, None)
        with torch.no_grad():
            layer.lora_A.copy_(code_lora_a(layer.dim, int(r)))
        return layer

    replace_qkv(model, make)
