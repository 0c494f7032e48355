"""Per-epoch training losses of PVeRA fits with no evaluation at all, to compare across commits:
evaluation seeding must leave training's random stream (dropout, PVeRA's training noise, data
order) untouched.  PYTHONPATH=. python scripts/train_stream_check.py"""

import numpy as np
import timm
import torch

from pvera_bench import adapters
from pvera_bench.backbones import Classifier
from pvera_bench.data import Split
from pvera_bench.train import Trainer

torch.set_num_threads(1)
g = np.random.default_rng(0)
labels = g.integers(0, 3, 64)
split = Split((g.integers(0, 60, (64, 32, 32, 3)) + labels[:, None, None, None] * 60).astype(np.uint8),
              labels.astype(np.int64))
for inference in ("mean", "mc"):
    torch.manual_seed(0)
    bb = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                           embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.1)
    adapters.apply(bb, "pvera", r=4, projection_seed=0, inference=inference, mc_samples=4, beta=10.0)
    cfg = dict(epochs=4, batch_size=16, lr_head=1e-2, lr_adapter=1e-2, wd_head=0.0, wd_adapter=0.0,
               warmup_epochs=0, shuffle=True, precision="fp32", eval_batch_size=64, progress=False)
    fit = Trainer(Classifier(bb, 3), cfg, torch.device("cpu"), seed=3).fit(split)
    print(inference, [f"{e['train_loss']:.10f}" for e in fit.history])
