"""pvera-bench: parameter-efficient adapters on frozen ViTs, benchmarked on VTAB-1k."""

__version__ = "0.1.0"
