"""Truncated normal draws as timm 0.5.4 makes them, which NOAH runs (its requirements.txt: timm==0.5.4).

timm 0.5.4's ``timm/models/layers/weight_init.py`` ``_no_grad_trunc_normal_`` (behind ``trunc_normal_``)
draws by the inverse CDF: one ``uniform_`` over the tensor on [2 cdf(a) - 1, 2 cdf(b) - 1], ``erfinv_``,
scale by std * sqrt(2), shift by the mean, clamp to [a, b]. torch's ``nn.init.trunc_normal_`` (2.x) draws
the same distribution by rejection: other values, and another amount of the RNG consumed. Written here
from that description (the algorithm of Burkardt's "The Truncated Normal Distribution"), so that the
project does not depend on an old timm; tests/test_truncnormal.py checks it bit for bit against timm 0.5.4.
"""

from __future__ import annotations

import math

import torch


def _norm_cdf(x: float) -> float:
    return (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0


def trunc_normal_timm054_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0,
                          b: float = 2.0) -> torch.Tensor:
    """Fill ``tensor`` in place with N(mean, std^2) cut to [a, b] (absolute bounds), as timm 0.5.4."""
    with torch.no_grad():
        lo, hi = _norm_cdf((a - mean) / std), _norm_cdf((b - mean) / std)
        tensor.uniform_(2 * lo - 1, 2 * hi - 1)
        tensor.erfinv_()
        tensor.mul_(std * math.sqrt(2.0))
        tensor.add_(mean)
        tensor.clamp_(min=a, max=b)
        return tensor
