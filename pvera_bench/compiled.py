"""``torch.compile`` with an eager fallback (``runtime.compile``)."""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


class CompiledOrEager:
    """``torch.compile(model)``, replaced for good by the eager model the first time it fails."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.compiled = model, None
        try:
            self.compiled = torch.compile(model)
        except Exception as e:  # pragma: no cover - depends on the platform
            log.warning("torch.compile unavailable (%s); running eagerly", e)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except torch.OutOfMemoryError:  # not a compilation failure: eager would fail the same way
                raise
            except Exception as e:
                log.warning("torch.compile failed (%s: %s); running eagerly", type(e).__name__, str(e)[:200])
                self.compiled = None
        return self.model(x)
