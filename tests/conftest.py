"""Shared test setup: offline, a private data cache, small CPU thread counts, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["PVERA_BENCH_PLUGINS"] = "0"  # the built-in adapters only, whatever plugin packages are installed
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests' tensors are tiny: intra-op threads only add overhead (100x on a busy 2-core box)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pvera-cache")


@pytest.fixture
def cli(tmp_path, cache_dir):
    """Run ``pvera-bench ARGS`` in a subprocess (cwd: a fresh directory); returns CompletedProcess."""

    def run(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
        e = dict(os.environ, HF_HUB_OFFLINE="1", PVERA_BENCH_CACHE=str(cache_dir), OMP_NUM_THREADS="1",
                 HF_HOME=str(tmp_path / "hf-home"), PYTHONUNBUFFERED="1", **(env or {}))
        return subprocess.run([sys.executable, "-m", "pvera_bench.cli", *args], cwd=cwd or tmp_path, env=e,
                              capture_output=True, text=True, timeout=timeout)

    return run


def tiny_vit(seed: int | None = None, dtype=None, *, frozen: bool = False, **kw):
    """The tests' tiny timm ViT (d=32, 2 blocks, 8x8 patches of 32 px images; ``kw`` overrides any
    of these). ``frozen=True``: built after ``torch.manual_seed(seed or 0)``, every bias made
    non-zero (timm initialises them to 0, so the adapters' handling of the bias, DoRA's and IA3's
    merging, is actually exercised), frozen, in eval mode and of ``dtype``."""
    import timm
    import torch

    if frozen:
        torch.manual_seed(seed or 0)
    opts = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    opts.update(kw)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **opts)
    if not frozen:
        return m
    g = torch.Generator().manual_seed(1000 + (seed or 0))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    for p in m.parameters():
        p.requires_grad_(False)
    return m.to(dtype or torch.float32).eval()
