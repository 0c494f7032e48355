"""Where the package's configs live, for a source checkout, an editable install and a wheel alike."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def config_dir() -> Path:
    """``pvera_bench/configs`` inside a wheel; the top-level ``configs/`` in a checkout."""
    for cand in (_HERE / "configs", _HERE.parent / "configs"):
        if (cand / "config.yaml").is_file():
            return cand
    raise FileNotFoundError(f"pvera-bench configs not found next to {_HERE}; reinstall the package")
