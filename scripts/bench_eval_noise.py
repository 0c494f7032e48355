"""Evaluation time of PVeRA inference=mc with per-example noise (``adapters.example_noise``: one
generator per example, one draw per layer) against drawing the whole batch's noise at once from
one generator (what evaluation did before), interleaved A/B/A/B. CPU, one thread.

    PYTHONPATH=. python scripts/bench_eval_noise.py [--size tiny|vit_tiny224] [--images N]"""

import argparse
import contextlib
import time

import numpy as np
import timm
import torch

from pvera_bench import adapters
from pvera_bench.backbones import Classifier
from pvera_bench.data import Split
from pvera_bench.train import Trainer

ap = argparse.ArgumentParser()
ap.add_argument("--size", default="tiny", choices=["tiny", "vit_tiny224"])
ap.add_argument("--images", type=int, default=256)
ap.add_argument("--mc-samples", type=int, default=8)
ap.add_argument("--rounds", type=int, default=3)
a = ap.parse_args()
torch.set_num_threads(1)
kw = (dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2) if a.size == "tiny" else {})
bb = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **kw)
adapters.apply(bb, "pvera", r=256 if a.size != "tiny" else 8, inference="mc", mc_samples=a.mc_samples)
px = bb.patch_embed.img_size[0]
g = np.random.default_rng(0)
split = Split(g.integers(0, 255, (a.images, px, px, 3), dtype=np.uint8), g.integers(0, 10, a.images))
t = Trainer(Classifier(bb, 10), dict(epochs=1, batch_size=16, lr_head=1e-3, lr_adapter=1e-3, wd_head=0.0,
                                      wd_adapter=0.0, precision="fp32", eval_batch_size=256, progress=False),
            torch.device("cpu"))
real = adapters.example_noise
one_stream = lambda *args, **kw: contextlib.nullcontext()  # noqa: E731  (layers fall back to randn_like)
t.predict(split, progress=False)  # warm up
times = {"per-example": [], "one generator": []}
for _ in range(a.rounds):
    for name, ctx in (("per-example", real), ("one generator", one_stream)):
        adapters.example_noise = ctx
        t0 = time.perf_counter()
        t.predict(split, progress=False)
        times[name].append(time.perf_counter() - t0)
adapters.example_noise = real
pe, og = min(times["per-example"]), min(times["one generator"])
print(f"{a.size}: {a.images} images x {a.mc_samples} samples, eval_batch_size 256, best of {a.rounds}: "
      f"per-example {pe:.3f} s, one generator {og:.3f} s, ratio {pe / og:.3f}")
