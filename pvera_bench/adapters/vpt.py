"""VPT (Jia et al. 2022, "Visual Prompt Tuning"): ``length`` learnable prompt tokens inserted into
the token sequence, as the VPT code does it (KMnP/vpt src/models/vit_prompt/vit.py,
``PromptedTransformer``):

- the prompts go after the CLS token (after every prefix token: CLS and registers) and before the
  patch tokens, after the position embedding (they have none): ``incorporate_prompt``;
- ``depth=shallow``: only the input of the first block gets prompts; ``depth=deep``: every later
  block's input has the previous block's prompt outputs replaced by that block's own prompts
  (``forward_deep_prompt``), so ``depth x length x d`` parameters (12 x 10 x 768 = 92,160 on
  ViT-B/16 with length 10; 7,680 shallow);
- ``init=vpt``: ``U(-v, v)`` with ``v = sqrt(6 / (3 * patch_h * patch_w + d))`` (the source's
  "xavier_uniform" for prompts; ``INITIATION == "random"``); ``init=vpetl``: ``v = sqrt(6 / d)``
  (V-PETL-Bench's VPT-Shallow, ImageClassification/models/vision_transformer_vptshallow.py
  ``VisionTransformer.__init__``); ``dropout`` on the prompts, drawn per sample (the source
  applies it to the prompts expanded over the batch);
- the prompt outputs leave the sequence after the last block, so the final norm and the pooling
  see the same tokens as without prompts: with timm's ``global_pool='token'`` (ViT-B/16) the
  feature is the CLS token after the norm, as the source's ``x[:, 0]`` (the norm works per token,
  so removing the prompts before it changes nothing).

Each block is wrapped, not modified: its attention (timm's fused scaled-dot-product path) runs on
the longer sequence unchanged. Not identity at initialisation (random prompts change attention,
as in the source); nothing to merge (the prompts are tokens, not weights).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..specs.vpt import DEPTHS, INITS
from .base import AdapterLayer, AdapterOptionError, blocks, check_choice, check_positive



class PromptedBlock(AdapterLayer):
    """One block with the prompt bookkeeping around it: before the block, insert (``first``) or
    replace this block's prompts at positions ``[start, start + length)``; after it, drop them
    (``last``)."""

    def __init__(self, block: nn.Module, start: int, length: int, dim: int, prompts: bool, first: bool,
                 last: bool, bound: float, dropout: float, like: torch.Tensor | None = None) -> None:
        super().__init__()
        self.block, self.start, self.length, self.first, self.last = block, int(start), int(length), first, last
        if prompts:
            kw = dict(dtype=like.dtype, device=like.device) if like is not None else {}
            self.prompt = nn.Parameter(torch.empty(1, self.length, dim, **kw))
            nn.init.uniform_(self.prompt, -bound, bound)
        else:
            self.prompt = None
        self.drop = nn.Dropout(float(dropout)) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        a = self.start
        if self.prompt is not None:
            p = self.drop(self.prompt.to(x.dtype).expand(x.shape[0], -1, -1))
            rest = x[:, a:] if self.first else x[:, a + self.length:]
            x = torch.cat((x[:, :a], p, rest), dim=1)
        x = self.block(x, *args, **kwargs)
        if self.last:
            x = torch.cat((x[:, :a], x[:, a + self.length:]), dim=1)
        return x


def prompt_bound(model: nn.Module, init: str = "vpt") -> float:
    """The uniform bound: ``sqrt(6 / (3 * patch_h * patch_w + d))`` (VPT's, 3 input channels) or
    ``sqrt(6 / d)`` (V-PETL-Bench's)."""
    if init == "vpetl":
        return math.sqrt(6.0 / float(model.embed_dim))
    ph, pw = model.patch_embed.patch_size
    return math.sqrt(6.0 / float(3 * ph * pw + model.embed_dim))


def apply(model: nn.Module, length: int, depth: str, dropout: float, init: str) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise AdapterOptionError(f"adapter.length={length!r} is not valid; it must be an integer >= 1")
    check_choice("depth", depth, DEPTHS)
    check_positive("dropout", dropout, allow_zero=True, upper=1.0)
    check_choice("init", init, INITS)
    bs = blocks(model)
    start, bound, n = int(getattr(model, "num_prefix_tokens", 1)), prompt_bound(model, init), len(bs)
    for i in range(n):
        bs[i] = PromptedBlock(bs[i], start, length, model.embed_dim, prompts=(i == 0 or depth == "deep"),
                              first=(i == 0), last=(i == n - 1), bound=bound, dropout=dropout,
                              like=next(model.parameters(), None))
