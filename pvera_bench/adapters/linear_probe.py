"""Linear probing: the backbone stays exactly as it is; only the head trains."""

from __future__ import annotations

from torch import nn



def apply(model: nn.Module) -> None:
    """Nothing to insert: ``pvera_bench.adapters.apply`` has already frozen the backbone."""
