"""Data: task table entry -> source (tfds | folder | sklearn_digits) -> uint8 images -> batches.

The one entry point is :func:`load_split`; it knows nothing of Hydra, adapters or the CSV.
"""

from . import digits  # noqa: F401  (each source module registers itself)
from .core import DataError, Split, available_sources, load_split, register_source

__all__ = ["DataError", "Split", "available_sources", "load_split", "register_source"]
