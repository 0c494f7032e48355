"""PVeRA's signal-to-noise at initialisation: how large its sampled noise is next to its mean.

At the paper-code initialisation (``init=pvera_code``), each adapted projection computes
``h = (x A) * lambda_d``, ``mu = h[..., :r]``, ``logvar = h[..., r:]`` and trains on
``z = mu + eps * exp(logvar / 2)``. This script applies PVeRA to a backbone, feeds it the demo's
digits (train800, resized to the backbone's size as a run does), records ``mu`` and ``logvar`` at
every adapted q and v projection, and prints per backbone the ratio

    noise / signal = mean(exp(logvar / 2)) / std(mu)

(the mean sampled-noise scale over the spread of the mean, over all images, tokens and latent
entries; the median over the layers and the range). Above 1 the latent the adapter trains on is
mostly noise. Weights: the backbones' configs (random weights for ViT-B/16 here: none can be
downloaded), the same seed for the projections everywhere.

    python scripts/pvera_snr.py                       # tiny pretrained, tiny random, ViT-B/16 random
    python scripts/pvera_snr.py --images 16 --r 256
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def layer_ratios(backbone_cfg: dict, images: int, r: int, seed: int) -> np.ndarray:
    import torch

    from pvera_bench import adapters
    from pvera_bench.adapters.pvera import PveraQV
    from pvera_bench.backbones import Classifier, create_backbone, input_size
    from pvera_bench.data import load_split
    from pvera_bench.tasks import task_configs

    torch.manual_seed(seed)
    bb = create_backbone(backbone_cfg)
    adapters.apply(bb, "pvera", r=r, projection_seed=seed)
    model = Classifier(bb, 10).eval()
    task = task_configs()["demo"]
    split = load_split(task, "train800", source="sklearn_digits", data_dir=None, img_size=input_size(bb))
    x = torch.from_numpy(np.asarray(split.images[:images]))
    ratios = []

    def hook(mod, inputs, _out):
        h = mod._codes(inputs[0])  # (..., 2, 2r): [mu | logvar] for q and v
        for k in range(2):
            mu, logvar = h[..., k, : mod.r], h[..., k, mod.r:]
            ratios.append(float(torch.exp(0.5 * logvar).mean() / mu.std()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, PveraQV)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return np.array(ratios)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=32, help="digits train800 images fed through")
    ap.add_argument("--r", type=int, default=256, help="PVeRA's rank (the paper's and the demo's: 256)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backbones", nargs="+", default=["vit_tiny_pretrained", "vit_tiny_random", "vit_b16"])
    args = ap.parse_args(argv)

    import torch
    from omegaconf import OmegaConf

    from pvera_bench.paths import config_dir

    torch.set_num_threads(2)
    print("| backbone | weights | width | noise / signal, median over q,v layers | min | max |")
    print("|---|---|---:|---:|---:|---:|")
    for name in args.backbones:
        cfg = OmegaConf.to_container(OmegaConf.load(config_dir() / "backbone" / f"{name}.yaml"), resolve=True)
        weights = "shipped file" if cfg.get("checkpoint") else "random"
        if cfg.get("pretrained") and not cfg.get("checkpoint"):  # hub weights: not here, use random ones
            cfg["pretrained"] = False
        ratios = layer_ratios(cfg, args.images, args.r, args.seed)
        width = int((cfg.get("kwargs") or {}).get("embed_dim", 768))
        print(f"| {name} | {weights} | {width} | {np.median(ratios):.2f} | {ratios.min():.2f} | {ratios.max():.2f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
