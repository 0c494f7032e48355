#!/usr/bin/env python
"""Step time with and without the training augmentation (trainer.augment), interleaved A/B.

    PYTHONPATH=. python scripts/bench_augment.py [--backbone vit_tiny_random] [--adapter adaptformer]
        [--batch 64] [--rounds 15] [--steps 5] [--threads 2] [--spec hflip+rand-m9-mstd0.5-inc1]

One training step as ``Trainer._train_epoch`` runs it (uint8 batch -> [augment] -> forward,
cross-entropy, backward, AdamW) on the backbone config's model with the adapter in recipe=vpetl's
form where it has one (AdaptFormer: width 8, input LayerNorm, dropout 0.1, outside the drop
path). Each round times ``--steps`` steps without and then with augmentation (the order alternates
between rounds); the ratio is the median of the per-round ratios, so a machine whose load drifts
affects both sides alike. ``aug only`` times the augmentation alone on the same batch, and
``--aug-only-size`` adds it for a batch of that side length (e.g. 224: a ViT-B/16 batch).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from pvera_bench import adapters  # noqa: E402
from pvera_bench.backbones import Classifier, create_backbone, input_size  # noqa: E402
from pvera_bench.data.augment_ops import Augment  # noqa: E402
from pvera_bench.paths import config_dir  # noqa: E402

VPETL_FORM = {"adaptformer": dict(width=8, scale=1.0, init="noah", dropout=0.1, norm_input=True,
                                  outside_drop_path=True),
              "lora": dict(r=8, alpha=8.0, targets="qv", init="noah"),
              "bottleneck": dict(width=8, placement="mlp", init="noah")}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="vit_tiny_random")
    ap.add_argument("--adapter", default="adaptformer")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=3, help="steps per side per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--spec", default="hflip+rand-m9-mstd0.5-inc1")
    ap.add_argument("--aug-only-size", type=int, default=224)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    bcfg = OmegaConf.to_container(OmegaConf.load(config_dir() / "backbone" / f"{args.backbone}.yaml"), resolve=True)
    bcfg["drop_path_rate"] = 0.1
    backbone = create_backbone(bcfg)
    size = input_size(backbone)
    adapters.apply(backbone, args.adapter, **VPETL_FORM.get(args.adapter, {}))
    model = Classifier(backbone, 47).to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-4)
    images = torch.randint(0, 256, (args.batch, size, size, 3), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 47, (args.batch,), device=device)
    aug = Augment(args.spec)

    def step(augment: bool) -> None:
        x = aug(images) if augment else images
        loss = F.cross_entropy(model(x), labels, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def timed(fn, n: int) -> float:
        sync(device)
        t = time.perf_counter()
        for _ in range(n):
            fn()
        sync(device)
        return (time.perf_counter() - t) / n * 1000

    for a in (False, True):  # warm-up
        step(a)
    plain, augmented, ratios = [], [], []
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        got = {a: timed(lambda a=a: step(a), args.steps) for a in order}
        plain.append(got[False])
        augmented.append(got[True])
        ratios.append(got[True] / got[False])
        print(f"round {r + 1}: without {got[False]:.1f} ms, with {got[True]:.1f} ms, ratio {ratios[-1]:.3f}", flush=True)
    aug_only = timed(lambda: aug(images), args.rounds * args.steps)
    big = torch.randint(0, 256, (args.batch, args.aug_only_size, args.aug_only_size, 3), dtype=torch.uint8,
                        device=device)
    aug_big = timed(lambda: aug(big), 2)
    print(f"device {device}, torch threads {torch.get_num_threads()}, backbone {args.backbone} ({size} px), "
          f"adapter {args.adapter}, batch {args.batch}, {args.rounds} rounds x {args.steps} steps, spec {args.spec}")
    print(f"step ms without augmentation: median {statistics.median(plain):.2f}")
    print(f"step ms with augmentation:    median {statistics.median(augmented):.2f}")
    print(f"ratio with / without (median of per-round ratios): {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
    print(f"augmentation alone, {size} px batch: {aug_only:.2f} ms; "
          f"{args.aug_only_size} px batch of {args.batch}: {aug_big:.1f} ms")


if __name__ == "__main__":
    main()
