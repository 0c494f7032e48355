"""SSF (Lian et al. 2022, "Scaling & Shifting Your Features"): ``y * gamma + beta`` per channel
after each operation of the frozen ViT, as the SSF code places it (dongzelian/SSF
models/vision_transformer.py, ``tuning_mode == 'ssf'``):

- after the patch embedding's projection (``PatchEmbed``: ``ssf_scale_1``), and after its norm
  when it has one (``ssf_scale_2``; ViT-B/16 has none);
- in every block after ``norm1`` and ``norm2`` (``Block.forward``), after ``attn.qkv`` (3d
  channels) and ``attn.proj`` (``Attention.forward``), after ``mlp.fc1`` (before the activation)
  and ``mlp.fc2`` (``Mlp.forward``);
- after the final ``norm`` (``VisionTransformer.forward_features``).

Per block ``2 * (d + 3d + d + d + h + d)`` parameters (h: the MLP width), plus ``2d`` for the
patch embedding (``4d`` with a patch norm) and ``2d`` for the final norm: 205,824 on ViT-B/16.
Initialisation as ``init_ssf_scale_shift``: gamma ~ N(1, 0.02^2), beta ~ N(0, 0.02^2), so the
model starts near, not exactly at, the frozen one. Every scale-shift follows a linear map (a
Linear, the patch Conv2d or a LayerNorm's affine), so merging folds it into that map's weight
(``W * gamma``) and bias (``b * gamma + beta``), as the paper states; a map without a bias (or a
LayerNorm without affine) cannot absorb it, and then the model is evaluated unmerged.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import AdapterLayer, blocks


class ScaleShift(AdapterLayer):
    """``base(x) * scale + shift`` along the channel axis (the last one; dim 1 of a Conv2d's
    NCHW output)."""

    mergeable = True

    def __init__(self, base: nn.Module, dim: int) -> None:
        super().__init__()
        self.base = base
        self.conv = isinstance(base, nn.Conv2d)
        like = next(base.parameters(), None)  # the frozen module's dtype and device
        kw = dict(dtype=like.dtype, device=like.device) if like is not None else {}
        self.scale = nn.Parameter(torch.empty(dim, **kw))
        self.shift = nn.Parameter(torch.empty(dim, **kw))
        nn.init.normal_(self.scale, mean=1.0, std=0.02)  # SSF code: init_ssf_scale_shift
        nn.init.normal_(self.shift, std=0.02)

    def can_merge(self) -> bool:
        w, b = getattr(self.base, "weight", None), getattr(self.base, "bias", None)
        return isinstance(w, torch.Tensor) and isinstance(b, torch.Tensor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_not_merged()
        y = self.base(x)
        if self.merged:
            return y
        s, t = self.scale.to(y.dtype), self.shift.to(y.dtype)
        if self.conv:
            s, t = s[:, None, None], t[:, None, None]
        return torch.addcmul(t, y, s)

    def _merge(self) -> None:
        w, b = self.base.weight, self.base.bias
        s = self.scale.to(w.dtype)
        self._save(w).mul_(s.view(-1, *([1] * (w.ndim - 1))))
        self._save(b).mul_(s).add_(self.shift.to(b.dtype))


def apply(model: nn.Module) -> None:
    d = model.embed_dim
    pe = model.patch_embed
    pe.proj = ScaleShift(pe.proj, pe.proj.out_channels)
    if not isinstance(pe.norm, nn.Identity):
        pe.norm = ScaleShift(pe.norm, d)
    for blk in blocks(model):
        blk.norm1 = ScaleShift(blk.norm1, d)
        blk.attn.qkv = ScaleShift(blk.attn.qkv, blk.attn.qkv.out_features)
        blk.attn.proj = ScaleShift(blk.attn.proj, blk.attn.proj.out_features)
        blk.norm2 = ScaleShift(blk.norm2, d)
        blk.mlp.fc1 = ScaleShift(blk.mlp.fc1, blk.mlp.fc1.out_features)
        blk.mlp.fc2 = ScaleShift(blk.mlp.fc2, blk.mlp.fc2.out_features)
    model.norm = ScaleShift(model.norm, d)
