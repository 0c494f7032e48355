"""VPT's declaration; the layers are pvera_bench/adapters/vpt.py."""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Adapter, declare, option

DEPTHS = ("shallow", "deep")
INITS = ("vpt", "vpetl")


@dataclass(frozen=True)
class VptOptions:
    length: int = option(10, ge=1, help="prompt tokens per prompted block")
    depth: str = option("shallow", choices=DEPTHS, help="shallow: prompts before the first block; deep: every block")
    dropout: float = option(0.0, ge=0, lt=1, help="dropout on the prompts, in training")
    init: str = option("vpt", choices=INITS, help="vpt: U(-v, v), v = sqrt(6 / (3 p^2 + d)); vpetl: v = sqrt(6 / d)")


declare(Adapter("vpt", VptOptions, apply="pvera_bench.adapters.vpt:apply",
                help="VPT (Jia et al. 2022): learnable prompt tokens in the token sequence",
                no_peft_form="vpt has no PEFT form: PEFT's prompt tuning prepends virtual tokens to a transformers "
                             "model's word embeddings, not to a timm ViT's token sequence block by block"))
