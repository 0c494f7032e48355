"""Pretrain the demo's tiny ViT on fractals made from formulas (no natural image, no digit).

Formula-driven supervised pretraining, as FractalDB (Kataoka et al., ACCV 2020; for ViTs
Nakashima et al., AAAI 2022): each class is one random iterated function system (IFS), each image
is a chaos-game rendering of a randomly perturbed copy of it, and the network learns to name the
system. The systems are drawn with the sigma-factor rule of Anderson & Farrell ("Improving
Fractal Pre-training", WACV 2022): every map is rotation x diag(s1, s2) x rotation x reflection,
with singular values scaled so that sum(s1 + 2 s2) over the maps lies in [(5+N)/2, (6+N)/2]
(N maps), the band where their renderings are neither dust nor filled blobs. Within a class,
FractalDB varies one system by multiplying its parameters by weights near 1; here every
parameter gets an independent weight in [0.85, 1.15], plus a flip, a quarter turn, a random
placement, and a rendering resolution of 8, 16 or 32 px upsampled to 32 px with the data layer's
own resize (the backbone's downstream inputs are small images squashed to 32 px).

Everything is drawn from numpy Generators seeded from --seed, training runs with
torch.use_deterministic_algorithms and a fixed thread count, so two runs on one machine give
byte-identical weights (the script prints their sha256).

    python scripts/pretrain_tiny.py --out pvera_bench/weights/vit_tiny_fractal.safetensors
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

IMG = 32


def sample_system(rng: np.random.Generator) -> np.ndarray:
    """One IFS: (N, 6) rows (a, b, c, d, e, f) of x' = [[a, b], [c, d]] x + [e, f], N in 2..4."""
    n = int(rng.integers(2, 5))
    alpha = rng.uniform(0.5 * (5 + n), 0.5 * (6 + n))  # Anderson & Farrell's sigma-factor band
    # singular values: s1 >= s2 in (0, 1), scaled so that sum(s1 + 2 s2) = alpha (kept below 1)
    s = np.sort(rng.uniform(0.2, 1.0, size=(n, 2)), axis=1)[:, ::-1]
    for _ in range(20):
        s = np.clip(s * alpha / (s[:, 0] + 2 * s[:, 1]).sum(), 0.05, 0.98)
    maps = np.empty((n, 6))
    for i in range(n):
        th, ph = rng.uniform(0, 2 * np.pi, size=2)
        r1 = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        r2 = np.array([[np.cos(ph), -np.sin(ph)], [np.sin(ph), np.cos(ph)]])
        d = np.diag(rng.choice([-1.0, 1.0], size=2))
        a = r1 @ np.diag(s[i]) @ r2 @ d
        maps[i, :4] = a.ravel()
        maps[i, 4:] = rng.uniform(-1, 1, size=2)
    return maps


def render(systems: list[np.ndarray], labels: np.ndarray, rng: np.random.Generator,
           points: int = 1200) -> np.ndarray:
    """One image per label (uint8, IMG x IMG, grey), vectorised over images: chaos game."""
    from pvera_bench.data.core import resize_uint8

    b = len(labels)
    nmax = max(len(s) for s in systems)
    mats = np.zeros((b, nmax, 6))
    probs = np.zeros((b, nmax))
    for j, y in enumerate(labels):
        m = systems[y] * rng.uniform(0.85, 1.15, size=systems[y].shape)  # FractalDB-style intra-class weights
        det = np.abs(m[:, 0] * m[:, 3] - m[:, 1] * m[:, 2]) + 1e-3
        mats[j, :len(m)] = m
        probs[j, :len(m)] = det / det.sum()  # FractalDB: a map is chosen in proportion to its area
    cum = np.cumsum(probs, axis=1)
    choice = (rng.random((points, b, 1)) > cum[None]).sum(-1)  # (points, b) map indices
    choice = np.minimum(choice, nmax - 1)
    xy = np.zeros((b, 2))
    out = np.zeros((points, b, 2))
    ar = np.arange(b)
    for t in range(points):
        m = mats[ar, choice[t]]
        xy = np.stack([m[:, 0] * xy[:, 0] + m[:, 1] * xy[:, 1] + m[:, 4],
                       m[:, 2] * xy[:, 0] + m[:, 3] * xy[:, 1] + m[:, 5]], axis=1)
        out[t] = xy
    pts = out[20:].transpose(1, 0, 2)  # (b, points - burn-in, 2)
    lo = np.percentile(pts, 1, axis=1, keepdims=True)
    hi = np.percentile(pts, 99, axis=1, keepdims=True)
    span = np.maximum((hi - lo).max(-1, keepdims=True), 1e-6)
    res = rng.choice([8, 16, 32], size=b)
    scale = rng.uniform(0.65, 1.0, size=(b, 1, 1))
    images = np.zeros((b, IMG, IMG, 3), np.uint8)
    for r in (8, 16, 32):
        idx = np.flatnonzero(res == r)
        if not len(idx):
            continue
        u = (pts[idx] - lo[idx]) / span[idx] * scale[idx]  # in [0, scale] (1% outliers clipped)
        off = rng.uniform(0, 1 - scale[idx], size=(len(idx), 1, 2))
        px = np.clip(((u + off) * r).astype(np.int64), 0, r - 1)
        flat = (np.arange(len(idx))[:, None] * r + px[..., 1]) * r + px[..., 0]  # (image, row, col) -> one index
        canvas = np.bincount(flat.ravel(), minlength=len(idx) * r * r).reshape(len(idx), r, r).astype(np.float64)
        canvas = np.log1p(canvas)  # point counts per pixel, log-compressed
        canvas /= np.maximum(canvas.max(axis=(1, 2), keepdims=True), 1e-9)
        grey = (canvas * 255).round().astype(np.uint8)
        images[idx] = resize_uint8(grey, IMG)  # the data layer's resize (bilinear, antialiased)
    flip = rng.random(b) < 0.5
    images[flip] = images[flip, :, ::-1]
    turns = rng.integers(0, 4, size=b)
    for k in range(1, 4):
        images[turns == k] = np.rot90(images[turns == k], k, axes=(1, 2))
    return images


def make_split(systems, per_class: int, rng: np.random.Generator, chunk: int = 1024):
    labels = np.repeat(np.arange(len(systems)), per_class)
    labels = labels[rng.permutation(len(labels))]
    imgs = np.concatenate([render(systems, labels[i:i + chunk], rng) for i in range(0, len(labels), chunk)])
    return imgs, labels


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="safetensors file of the backbone's weights (no head)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", type=int, default=50, help="fractal classes (IFS systems)")
    ap.add_argument("--per-class", type=int, default=100, help="fresh training images per class and epoch")
    ap.add_argument("--val-per-class", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--backbone", default="vit_tiny_random", help="the architecture: a configs/backbone name")
    args = ap.parse_args(argv)

    import torch
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from pvera_bench.backbones import Classifier, create_backbone
    from pvera_bench.paths import config_dir

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()

    seeds = np.random.SeedSequence(args.seed).spawn(3)
    sys_rng, val_rng = np.random.default_rng(seeds[0]), np.random.default_rng(seeds[1])
    epoch_seeds = seeds[2].spawn(args.epochs)
    systems = [sample_system(sys_rng) for _ in range(args.classes)]
    val_x, val_y = make_split(systems, args.val_per_class, val_rng)

    cfg = OmegaConf.to_container(OmegaConf.load(config_dir() / "backbone" / f"{args.backbone}.yaml"))
    cfg.update(checkpoint=None, pretrained=False)
    torch.manual_seed(args.seed)
    backbone = create_backbone(cfg)
    for p in backbone.parameters():
        p.requires_grad_(True)
    model = Classifier(backbone, args.classes)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n and "token" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "pos_embed" not in n and "token" not in n)]
    opt = torch.optim.AdamW([dict(params=decay, weight_decay=args.weight_decay), dict(params=rest, weight_decay=0.0)],
                            lr=args.lr)
    steps_per_epoch = args.classes * args.per_class // args.batch
    total, warm = args.epochs * steps_per_epoch, steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(torch.from_numpy(val_x[i:i + 512])).argmax(1) for i in range(0, len(val_x), 512)])
        model.train()
        return float((pred.numpy() == val_y).mean() * 100)

    gen_s = 0.0
    history = []
    for epoch in range(args.epochs):
        g = time.perf_counter()
        x, y = make_split(systems, args.per_class, np.random.default_rng(epoch_seeds[epoch]))
        gen_s += time.perf_counter() - g
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        model.train()
        run_loss, n = 0.0, 0
        for s in range(steps_per_epoch):
            xb, yb = xt[s * args.batch:(s + 1) * args.batch], yt[s * args.batch:(s + 1) * args.batch]
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run_loss += float(loss.detach()) * len(yb)
            n += len(yb)
        acc = evaluate() if (epoch + 1) % 5 == 0 or epoch + 1 == args.epochs else float("nan")
        history.append(dict(epoch=epoch + 1, train_loss=round(run_loss / n, 4), val_acc=acc))
        print(f"epoch {epoch + 1}/{args.epochs} train_loss {run_loss / n:.4f} val_acc {acc:.2f} "
              f"({time.perf_counter() - t0:.0f} s, generation {gen_s:.0f} s)", flush=True)

    state = {k: v.detach().contiguous() for k, v in backbone.state_dict().items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # ONE metadata entry: safetensors writes a metadata map in hash order, which varies from run to run
    meta = {"pretrain_tiny": json.dumps(dict(args=vars(args) | dict(out=None), val_acc=history[-1]["val_acc"]),
                                        sort_keys=True)}
    tmp = out.with_suffix(out.suffix + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, out)
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    print(json.dumps(dict(out=str(out), sha256=sha, bytes=out.stat().st_size, val_acc=history[-1]["val_acc"],
                          seconds=round(time.perf_counter() - t0, 1), generation_seconds=round(gen_s, 1),
                          torch=torch.__version__, threads=args.threads)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
