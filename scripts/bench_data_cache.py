#!/usr/bin/env python
"""Time one epoch over a miniature folder dataset with and without the decoded-image cache.

    .venv/bin/python scripts/bench_data_cache.py [--n 1000] [--src-size 224] [--img-size 224] [--epochs 3]

"Epoch" = load the split (load_split) and walk it in batches of 64 as float tensors, as a training
loop would. Without a cache every epoch decodes and resizes every JPEG; with a cache the first
epoch decodes once into ``cache_dir`` and later epochs memory-map it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from helpers_data import folder_task, make_folder_tree  # noqa: E402

from pvera_bench.data import load_split  # noqa: E402


def walk(split, batch: int = 64) -> float:
    """What a training loop does with the arrays: batches -> float tensors (a copy: memmaps are read-only)."""
    import torch

    acc = 0.0
    for a in range(0, len(split), batch):
        x = torch.from_numpy(np.array(split.images[a:a + batch])).permute(0, 3, 1, 2).float()
        acc += float(x[:, :, 0, 0].sum())
    return acc


def epoch(task, root, img_size, cache_dir) -> tuple[float, float]:
    """(seconds in load_split, seconds for the whole epoch)."""
    t = time.perf_counter()
    s = load_split(task, "test", source="folder", data_dir=root, img_size=img_size, cache_dir=cache_dir)
    t_load = time.perf_counter() - t
    walk(s)
    return t_load, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="images in the split")
    ap.add_argument("--src-size", type=int, default=224, help="JPEG side length on disk")
    ap.add_argument("--img-size", type=int, default=224, help="model input side length")
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    import torch

    print(f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        counts = {"train800": 1, "val200": 1, "test": args.n}
        root = str(make_folder_tree(Path(tmp) / "vtab-1k", "cifar", n_per_split=counts, num_classes=10,
                                    size=args.src_size))
        task = folder_task("bench", "cifar", 10, counts)
        jpeg_bytes = sum(p.stat().st_size for p in (Path(root) / "cifar" / "images" / "test").iterdir())
        print(f"wrote {args.n} JPEGs of {args.src_size} px ({jpeg_bytes / args.n / 1024:.1f} KiB each) "
              f"in {time.perf_counter() - t:.1f} s")
        cold = [epoch(task, root, args.img_size, None) for _ in range(args.epochs)]
        cache = str(Path(tmp) / "cache")
        cached = [epoch(task, root, args.img_size, cache) for _ in range(args.epochs)]
        entry = next(p for p in Path(cache).glob("*/*") if p.is_dir())
        per_img = (entry / "images.npy").stat().st_size / args.n
        ms = lambda xs: ", ".join(f"{x[0] * 1000:.0f}/{x[1] * 1000:.0f}" for x in xs)  # noqa: E731
        print("ms per epoch, load_split / whole epoch (load + batches to float tensors):")
        print(f"  no cache   (decode + resize every epoch): {ms(cold)}")
        print(f"  with cache (1st builds, then memmap):     {ms(cached)}")
        warm = np.mean([c[0] for c in cached[1:]])
        print(f"  load_split: {np.mean([c[0] for c in cold]) * 1000:.0f} ms cold vs {warm * 1000:.1f} ms cached "
              f"({np.mean([c[0] for c in cold]) / warm:.0f}x); epoch: "
              f"{np.mean([c[1] for c in cold]) / np.mean([c[1] for c in cached[1:]]):.1f}x faster")
        print(f"cache: {per_img:.0f} bytes per image at {args.img_size} px "
              f"(= {args.img_size}*{args.img_size}*3); dsprites test (73,728 images): "
              f"{per_img * 73728 / 2**30:.2f} GiB; all 19 VTAB-1k test splits (387,904 images): "
              f"{per_img * 387_904 / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
