"""FacT's layers, as the source computes them (JieShibo/PETL-ViT, FacT/fact_tt.py and FacT/fact_tk.py).

FacT stacks the 12 weight increments of each block (q, k, v, o: d x d; fc1, fc2: 4 of d x d each)
into one 12L x d x d tensor and factorises it. Both forms share ``U`` (d -> r, nn.Linear's init)
and ``V`` (r -> d, zero: the model starts as the frozen one) over every block; with ``h = U x``:

- **FacT-TT** (Tensor-Train): each weight has its own r x r core: ``dq = s * V(dropout(T_q(U x)))``,
  likewise k, v and o (o reads the attention output, the input of ``proj``); fc1 has an r -> 4r core
  whose output is read as 4 chunks of r, each mapped by V (``fc1`` gains 4 chunks of d); fc2 maps each
  of its input's 4 chunks of d by U, reads them as 4r and has a 4r -> r core
  (fact_tt.py ``fact_forward_attn`` / ``fact_forward_mlp``, ``set_FacT``: cores nn.Linear(r, r),
  nn.Linear(r, 4r), nn.Linear(4r, r) without bias, nn.Linear's init);
- **FacT-TK** (Tucker): one core ``C`` (r x r x r, Xavier-uniform) and one ``P`` (r x 12L,
  Xavier-uniform); block i's 12 r x r cores are ``(C @ P[:, 12 i : 12 i + 12])[:, :, k]``: q, k, v, o
  are k = 0..3 (``U x @ core``), fc1 and fc2 read the 8 others as an r x 4r matrix each, reshaped
  exactly as the source reshapes them (fact_tk.py ``fact_forward_attn`` / ``fact_forward_mlp``,
  ``set_FacT``: ``FacTp`` zeros (r, 144) and ``FacTc`` zeros (r, r, r), then xavier_uniform_; 144 =
  12 x 12 blocks of ViT-B, here 12 x depth).

Dropout (the source's ``nn.Dropout(0.1)``) acts on the core's output, in training only. The
factors are drawn in the source's order (U, V, then TT's cores block by block: q, k, v, o, fc1,
fc2; TK: C, then P). Each frozen ``attn.qkv``, ``attn.proj``, ``mlp.fc1`` and ``mlp.fc2`` is wrapped
(its output plus the update); the shared factors live in one module, ``fact``, on the ViT.
"""

from __future__ import annotations

import torch
from torch import nn

from pvera_bench.adapters import AdapterLayer, AdapterOptionError, blocks


class Factors(AdapterLayer):
    """The factors every block shares: U, V, and for FacT-TK the cores C and P."""

    def __init__(self, d: int, r: int, depth: int, tucker: bool) -> None:
        super().__init__()
        self.u = nn.Linear(d, r, bias=False)  # FacTu: nn.Linear's init
        self.v = nn.Linear(r, d, bias=False)  # FacTv: zero (after nn.Linear's init drew its values)
        nn.init.zeros_(self.v.weight)
        if tucker:
            self.c = nn.Parameter(torch.empty(r, r, r))
            self.p = nn.Parameter(torch.empty(r, 12 * depth))
            nn.init.xavier_uniform_(self.c)
            nn.init.xavier_uniform_(self.p)

    def tucker_cores(self, first: int, n: int) -> torch.Tensor:
        """``C @ P[:, first:first + n]``: (r, r, n), core k is ``[:, :, k]`` (input side first)."""
        return self.c @ self.p[:, first:first + n]


class _Update(AdapterLayer):
    """A frozen Linear plus FacT's update of its weight."""

    def __init__(self, base: nn.Linear, factors: Factors, scale: float, dropout: float) -> None:
        super().__init__()
        self.base, self.scale = base, scale
        self._factors = (factors,)  # shared, owned by the ViT's ``fact`` module (a tuple: not a submodule here)
        self.drop = nn.Dropout(dropout)

    @property
    def f(self) -> Factors:
        return self._factors[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.update(x) * self.scale


class TTQKV(_Update):
    def __init__(self, base, factors, scale, dropout, r: int) -> None:
        super().__init__(base, factors, scale, dropout)
        self.t = nn.ModuleList(nn.Linear(r, r, bias=False) for _ in range(3))  # q_FacTs, k_FacTs, v_FacTs

    def update(self, x):
        h = self.f.u(x)
        return torch.cat([self.f.v(self.drop(t(h))) for t in self.t], dim=-1)


class TTProj(_Update):
    def __init__(self, base, factors, scale, dropout, r: int) -> None:
        super().__init__(base, factors, scale, dropout)
        self.t = nn.Linear(r, r, bias=False)  # proj_FacTs

    def update(self, x):
        return self.f.v(self.drop(self.t(self.f.u(x))))


class TTFc1(_Update):
    def __init__(self, base, factors, scale, dropout, r: int) -> None:
        super().__init__(base, factors, scale, dropout)
        self.t = nn.Linear(r, 4 * r, bias=False)  # fc1_FacTs
        self.r = r

    def update(self, x):
        h = self.drop(self.t(self.f.u(x)))
        return self.f.v(h.reshape(*h.shape[:-1], 4, self.r)).flatten(-2)


class TTFc2(_Update):
    def __init__(self, base, factors, scale, dropout, r: int) -> None:
        super().__init__(base, factors, scale, dropout)
        self.t = nn.Linear(4 * r, r, bias=False)  # fc2_FacTs

    def update(self, x):
        h = self.f.u(x.reshape(*x.shape[:-1], 4, x.shape[-1] // 4)).flatten(-2)
        return self.f.v(self.drop(self.t(h)))


class TKQKV(_Update):
    def __init__(self, base, factors, scale, dropout, first: int) -> None:
        super().__init__(base, factors, scale, dropout)
        self.first = first  # block i: 12 i (q, k, v, o are its first four cores)

    def update(self, x):
        cores, h = self.f.tucker_cores(self.first, 4), self.f.u(x)
        return torch.cat([self.f.v(self.drop(h @ cores[:, :, k])) for k in range(3)], dim=-1)


class TKProj(TKQKV):
    def update(self, x):
        return self.f.v(self.drop(self.f.u(x) @ self.f.tucker_cores(self.first, 4)[:, :, 3]))


class TKFc1(_Update):
    def __init__(self, base, factors, scale, dropout, first: int, r: int) -> None:
        super().__init__(base, factors, scale, dropout)
        self.first, self.r = first, r  # block i: 12 i + 4 (fc1: its cores 0..3 of 8, fc2: 4..7)

    def update(self, x):
        core = self.f.tucker_cores(self.first, 8)[:, :, :4].reshape(self.r, 4 * self.r)
        h = self.drop(self.f.u(x) @ core)
        return self.f.v(h.reshape(*h.shape[:-1], 4, self.r)).flatten(-2)


class TKFc2(TKFc1):
    def update(self, x):
        core = self.f.tucker_cores(self.first, 8)[:, :, 4:].reshape(self.r, 4 * self.r)
        h = self.f.u(x.reshape(*x.shape[:-1], 4, x.shape[-1] // 4)).flatten(-2)
        return self.f.v(self.drop(h @ core.t()))


def _check(model: nn.Module, r: int) -> tuple[int, nn.ModuleList]:
    bs, d = blocks(model), model.embed_dim
    for i, blk in enumerate(bs):
        if blk.mlp.fc1.out_features != 4 * d:
            raise AdapterOptionError(f"FacT needs an MLP 4 x wider than the embedding (block {i}: "
                                     f"{blk.mlp.fc1.out_features} for d = {d}), as ViT-B/16's")
    return d, bs


def apply_tt(model: nn.Module, r: int, scale: float, dropout: float) -> None:
    d, bs = _check(model, r)
    model.fact = f = Factors(d, r, len(bs), tucker=False)
    for blk in bs:
        blk.attn.qkv = TTQKV(blk.attn.qkv, f, scale, dropout, r)
        blk.attn.proj = TTProj(blk.attn.proj, f, scale, dropout, r)
        blk.mlp.fc1 = TTFc1(blk.mlp.fc1, f, scale, dropout, r)
        blk.mlp.fc2 = TTFc2(blk.mlp.fc2, f, scale, dropout, r)


def apply_tk(model: nn.Module, r: int, scale: float, dropout: float) -> None:
    d, bs = _check(model, r)
    model.fact = f = Factors(d, r, len(bs), tucker=True)
    for i, blk in enumerate(bs):
        blk.attn.qkv = TKQKV(blk.attn.qkv, f, scale, dropout, 12 * i)
        blk.attn.proj = TKProj(blk.attn.proj, f, scale, dropout, 12 * i)
        blk.mlp.fc1 = TKFc1(blk.mlp.fc1, f, scale, dropout, 12 * i + 4, r)
        blk.mlp.fc2 = TKFc2(blk.mlp.fc2, f, scale, dropout, 12 * i + 4, r)
