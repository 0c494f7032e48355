"""Data: task table entry -> source (tfds | folder | sklearn_digits) -> decoded uint8 cache -> arrays.

The one entry point is :func:`load_split`; it knows nothing of Hydra, adapters or the CSV.
``pvera-bench data prepare|check`` lives in :mod:`.cli`; label rules in :mod:`.labels`.
"""

from . import digits, folder, tfds_source  # noqa: F401  (each source module registers itself)
from .core import (SPLITS, DataError, DataMissing, DataWarning, Split, SplitReader, available_sources, open_split,
                   register_source)
from .load import load_split

__all__ = ["SPLITS", "DataError", "DataMissing", "DataWarning", "Split", "SplitReader", "available_sources",
           "load_split", "open_split", "register_source"]
