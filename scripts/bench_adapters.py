#!/usr/bin/env python
"""Training-step time, peak memory and evaluation throughput of the adapters, against a floor and PEFT.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_adapters.py [--model vit_base_patch16_224]
        [--adapters lora,vera,...] [--batch 8] [--device cpu|cuda] [--rounds 10] [--threads 2]
        [--amp none|bf16] [--tiny] [--out-md FILE] [--out-csv FILE]

What is measured (one process, random weights, ``pretrained=False``; the frozen backbone's weights
are shared by every variant, so building 14 variants costs the memory of one backbone):

* step: one training step as ``pvera_bench.train.Trainer`` runs it (forward through our
  ``Classifier`` from a uint8 NHWC batch already on the device, cross-entropy (+ PVeRA's KL/beta),
  ``zero_grad(set_to_none=True)``, backward, AdamW step on the trainable tensors: adapter + head).
  linear_probe's step runs the frozen backbone without autograd each time; the trainer itself
  computes those features once per split and trains the head on them (tests/test_speed_paths.py).
* floor: the same frozen backbone and head with no adapter, but a single trainable scalar that
  multiplies the normalised input image, so that autograd goes back through every block.
* full, bitfit: they train tensors of the backbone itself; those get the variant's own copy (the
  rest stays shared), so that they count in its memory and the other variants stay frozen.
  vpt: deep, 10 tokens per block (``OPTIONS``); ssf: every scale-shift of the SSF code.
* PEFT: PEFT's implementation of the same method (lora, dora, vera, pvera, ia3; PEFT 0.21 has no
  full fine-tuning, BitFit, SSF, nor a VPT for timm ViTs: its prompt tuning is for transformers'
  language models, so those four have no PEFT column), applied as its
  users apply it to a timm ViT: ``target_modules=["qkv"]``, the *fused* qkv layer, so PEFT adapts
  q, k and v (ours adapts q and v only); ia3: ``["qkv", "fc2"]`` with ``feedforward_modules=["fc2"]``.
  Same r (lora/dora 8, vera/pvera 256), no dropout. PEFT's PVeRA has no KL term.
* Timing is interleaved: each round times every variant once (``--inner`` steps each), in an
  order rotated every round; ratios are per round (variant / floor, ours / PEFT in the same
  round) and the table gives the median over rounds (and the interquartile range in the CSV).
* eval: images/s of ``model(x)`` under ``torch.inference_mode`` (and autocast when ``--amp``),
  batch ``--eval-batch``, without merging and with ``adapters.merge`` (merge time excluded; the
  trainer merges once per evaluation).
* memory, CUDA: the peak of ``torch.cuda.max_memory_allocated`` during a step, above what was
  allocated before it, plus the variant's own resident tensors (adapter parameters and buffers,
  head, AdamW state): the memory a step needs beyond the shared frozen weights and the batch.
  CPU (``--mem alloc``, the default there): the peak of the bytes held by live tensors during one
  training step, from ``torch.profiler``'s memory timeline (``profile_memory``), minus the shared
  frozen weights: what the step itself needs, deterministic, and free of allocator slack.
  CPU (``--mem rss``): the process-level number; each variant
  runs in a fresh subprocess that builds the model (after one throwaway step on a tiny model that
  loads what a first step loads lazily), resets the peak RSS (``/proc/self/clear_refs``), then
  takes 2 steps; reported is peak RSS (``VmHWM``) minus the RSS just before the first step (glibc
  returns large blocks to the OS, so this tracks live memory; a few MB of allocator slack remain).
  ``--mem none`` skips it. Always reported: "saved MB", the bytes autograd saves for backward in
  one forward (deduplicated by storage, frozen weights excluded): deterministic, and the main
  term of the difference between variants.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pvera_bench import adapters  # noqa: E402
from pvera_bench.backbones import Classifier  # noqa: E402

ALL = ["linear_probe", "lora", "dora", "vera", "pvera", "ia3", "adaptformer", "bottleneck", "full", "bitfit", "vpt", "ssf"]
# The configs/adapter/*.yaml defaults (pvera: the most common beta).
OPTIONS = {
    "linear_probe": {},
    "lora": dict(r=8, alpha=8.0),
    "dora": dict(r=8, alpha=8.0),
    "vera": dict(r=256, alpha=16.0, lambda_d_init=0.1),
    "pvera": dict(r=256, alpha=16.0, lambda_d_init=0.1, beta=1e6),
    "ia3": {},
    "adaptformer": dict(width=64, scale=0.1),
    "bottleneck": dict(width=8),
    "full": {},
    "bitfit": {},
    "vpt": dict(length=10, depth="deep"),
    "ssf": {},
}
PEFT_METHODS = ("lora", "dora", "vera", "pvera", "ia3")
# Targets (CPU, ViT-B/16, batch 4-8, 2 threads): ratio to the floor, ratio to PEFT; memory <= PEFT.
FLOOR_TARGET = {"lora": 1.03, "vera": 1.13, "pvera": 1.21, "ia3": 1.06}
PEFT_TARGET = {"lora": 1.00, "vera": 1.00, "pvera": 1.05}
MEM_PEFT_TARGET = 1.00
TINY = dict(model="vit_tiny_patch16_224", kwargs=dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2))


def peft_config(method: str):
    import peft

    if method in ("lora", "dora"):
        o = OPTIONS[method]
        return peft.LoraConfig(r=o["r"], lora_alpha=o["alpha"], target_modules=["qkv"], lora_dropout=0.0,
                               use_dora=method == "dora")
    if method == "vera":
        return peft.VeraConfig(r=OPTIONS["vera"]["r"], target_modules=["qkv"], vera_dropout=0.0, d_initial=0.1)
    if method == "pvera":
        return peft.PveraConfig(r=OPTIONS["pvera"]["r"], target_modules=["qkv"], pvera_dropout=0.0, d_initial=0.1,
                                sample_at_inference=False)
    if method == "ia3":
        return peft.IA3Config(target_modules=["qkv", "fc2"], feedforward_modules=["fc2"])
    raise ValueError(method)


# ------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------
class FloorClassifier(Classifier):
    """The frozen backbone and head, plus one trainable scalar multiplying the input image."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__(backbone, num_classes)
        self.gain = nn.Parameter(torch.ones(()))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()
        return self.backbone(torch.addcmul(self.shift, x, self.scale) * self.gain)


def make_base(args) -> nn.Module:
    import timm

    if args.tiny:
        name, kw = TINY["model"], dict(TINY["kwargs"])
    else:
        name, kw = args.model, {}
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, num_classes=0, **kw)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def share_copy(base: nn.Module) -> nn.Module:
    """A deep copy of ``base`` whose parameters and buffers are ``base``'s own tensors."""
    memo = {id(t): t for t in list(base.parameters()) + list(base.buffers())}
    return copy.deepcopy(base, memo)


def own_trained_tensors(bb: nn.Module, base: nn.Module) -> None:
    """Give ``bb`` its own copy of every shared backbone tensor its adapter made trainable (full,
    bitfit) and leave ``base``'s frozen: the other variants share ``base``."""
    shared = {id(p) for p in base.parameters()}
    for mod in bb.modules():
        for k, p in list(mod._parameters.items()):
            if p is not None and id(p) in shared and p.requires_grad:
                mod._parameters[k] = nn.Parameter(p.detach().clone())
                p.requires_grad_(False)


@dataclass
class Variant:
    key: str  # floor | <adapter> | peft:<method>
    model: nn.Module
    opt: torch.optim.Optimizer
    aux: list = field(default_factory=list)
    ms: list = field(default_factory=list)  # per-round step time
    eval_unmerged: list = field(default_factory=list)  # per-round eval seconds per image
    eval_merged: list = field(default_factory=list)
    mem_bytes: float = float("nan")
    saved_bytes: float = float("nan")
    trainable: int = 0
    mergeable: bool = False


def build(key: str, base: nn.Module, num_classes: int, device: torch.device) -> Variant:
    torch.manual_seed(1)
    bb = share_copy(base)
    aux = []
    if key == "floor":
        model = FloorClassifier(bb, num_classes)
    elif key.startswith("peft:"):
        import peft

        pm = peft.get_peft_model(bb, peft_config(key[5:]))
        model = Classifier(pm, num_classes)
    else:
        adapters.apply(bb, key, **OPTIONS[key])
        own_trained_tensors(bb, base)
        model = Classifier(bb, num_classes)
        aux = adapters.aux_losses(model)
    model = model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4, fused=device.type == "cuda")
    v = Variant(key, model, opt, aux)
    v.trainable = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
    v.mergeable = not key.startswith("peft:") and key != "floor" and adapters.fully_mergeable(model)
    return v


# ------------------------------------------------------------------------------------------------
# measurement
# ------------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(v: Variant, x: torch.Tensor, y: torch.Tensor, autocast) -> None:
    """Trainer.fit's step."""
    with autocast():
        logits = v.model(x)
        loss = F.cross_entropy(logits.float(), y)
        for layer in v.aux:
            a = layer.aux_loss()
            if a is not None:
                loss = loss + a.float()
    v.opt.zero_grad(set_to_none=True)
    loss.backward()
    v.opt.step()


def time_steps(v: Variant, x, y, autocast, inner: int, device) -> float:
    v.model.train()
    sync(device)
    t = time.perf_counter()
    for _ in range(inner):
        train_step(v, x, y, autocast)
    sync(device)
    return (time.perf_counter() - t) / inner


def time_eval(v: Variant, x, autocast, inner: int, device, merged: bool) -> float:
    """Seconds per image of an inference-mode forward, merged (merge time excluded) or not."""
    v.model.eval()
    did = adapters.merge(v.model) if merged else 0
    try:
        with torch.inference_mode(), autocast():
            sync(device)
            t = time.perf_counter()
            for _ in range(inner):
                v.model(x)
            sync(device)
            dt = time.perf_counter() - t
    finally:
        if did:
            adapters.unmerge(v.model)
        v.model.train()
    return dt / inner / len(x)


def saved_bytes(v: Variant, x, autocast) -> int:
    """Bytes autograd saves for backward in one training forward (unique storages, weights excluded)."""
    frozen = {t.untyped_storage().data_ptr() for t in list(v.model.parameters()) + list(v.model.buffers())}
    frozen.add(x.untyped_storage().data_ptr())
    seen: dict[int, int] = {}

    def pack(t):
        try:
            s = t.untyped_storage()
            ptr = s.data_ptr()
            if ptr not in frozen:
                seen[ptr] = max(seen.get(ptr, 0), s.nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    v.model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast():
        logits = v.model(x)
        loss = F.cross_entropy(logits.float(), torch.zeros(len(x), dtype=torch.long, device=x.device))
        for layer in v.aux:
            a = layer.aux_loss()
            if a is not None:
                loss = loss + a.float()
    del loss, logits
    return sum(seen.values())


def own_resident_bytes(v: Variant, base: nn.Module) -> int:
    shared = {id(t) for t in list(base.parameters()) + list(base.buffers())}
    total = sum(t.numel() * t.element_size() for t in list(v.model.parameters()) + list(v.model.buffers())
                if id(t) not in shared)
    for st in v.opt.state.values():
        total += sum(t.numel() * t.element_size() for t in st.values() if torch.is_tensor(t))
    return total


def cuda_step_peak(v: Variant, base, x, y, autocast, device) -> int:
    sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    train_step(v, x, y, autocast)
    sync(device)
    return torch.cuda.max_memory_allocated(device) - before + own_resident_bytes(v, base)


def alloc_step_peak(v: Variant, base: nn.Module, x, y, autocast) -> int:
    """CPU: the peak bytes of live tensors during one training step (torch.profiler's memory
    timeline), minus the frozen weights every variant shares."""
    import tempfile
    import warnings

    from torch.profiler import ProfilerActivity, profile

    train_step(v, x, y, autocast)  # AdamW state exists before the measured step, as in training
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        train_step(v, x, y, autocast)
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # export_memory_timeline: deprecated, still the CPU tool
        path = Path(d) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    frozen = sum(t.numel() * t.element_size() for t in list(base.parameters()) + list(base.buffers()))
    return max(sum(s) for s in sizes) - frozen


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def mem_worker(args) -> None:
    """Subprocess: build one variant, report the peak-RSS growth of 2 training steps as JSON."""
    import gc

    import peft  # noqa: F401  every worker carries the same imports, whether it uses PEFT or not

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # Load whatever a first training step loads lazily (autograd engine, AdamW, kernels), on a
    # throwaway tiny model, so that the measured growth is the variant's and not the libraries'.
    tiny = argparse.Namespace(**{**vars(args), "tiny": True})
    w = build("lora", make_base(tiny), args.classes, device)
    wx, wy = batch(args, w.model.backbone, device, 2)
    train_step(w, wx, wy, autocast_factory(args, device))
    del w, wx, wy
    gc.collect()
    base = make_base(args)
    v = build(args._mem_worker, base, args.classes, device)
    x, y = batch(args, base, device, args.batch)
    autocast = autocast_factory(args, device)
    before = rss_bytes()
    reset = reset_peak_rss()
    for _ in range(2):
        train_step(v, x, y, autocast)
    print(json.dumps(dict(key=v.key, growth=peak_rss_bytes() - before, before=before, reset=reset)))


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """VmHWM: the peak RSS of this process image (since exec or the last reset); not ru_maxrss,
    which Linux carries over from the parent across fork + exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_in_subprocess(key: str, args) -> float:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_mem-worker", key, "--batch", str(args.batch),
           "--threads", str(args.threads), "--device", "cpu", "--classes", str(args.classes), "--amp", args.amp,
           "--model", args.model] + (["--tiny"] if args.tiny else [])
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if r.returncode != 0:
        print(f"  memory worker for {key} failed: {r.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return float("nan")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    if not res["reset"]:
        print(f"  note: {key}: could not reset VmHWM; growth is measured from the process's own peak",
              file=sys.stderr)
    return float(res["growth"])


def batch(args, base, device, n):
    size = base.patch_embed.img_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g).to(device)
    y = torch.randint(0, args.classes, (n,), generator=g).to(device)
    return x, y


def autocast_factory(args, device):
    if args.amp == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def med(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def quartiles(xs):
    xs = sorted(x for x in xs if x == x)
    if len(xs) < 2:
        return (med(xs), med(xs))
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def fmt(x, spec=".3f"):
    return "—" if x is None or x != x else format(x, spec)


def verdict(ratio, target):
    if target is None or ratio != ratio:
        return ""
    return " ✓" if ratio <= target else " ✗"


def summarise(variants: dict[str, Variant], names: list[str], rounds: int) -> list[dict]:
    floor = variants["floor"]
    rows = []
    for key in ["floor"] + names + [f"peft:{m}" for m in PEFT_METHODS if f"peft:{m}" in variants]:
        v = variants[key]
        r_floor = [a / b for a, b in zip(v.ms, floor.ms)]
        peft = variants.get(f"peft:{key}")
        r_peft = [a / b for a, b in zip(v.ms, peft.ms)] if peft else []
        q1, q3 = quartiles(r_floor)
        p1, p3 = quartiles(r_peft) if r_peft else (float("nan"), float("nan"))
        method = key[5:] if key.startswith("peft:") else key
        rows.append(dict(
            adapter=key, trainable=v.trainable, step_ms=med(v.ms) * 1e3,
            floor_ratio=med(r_floor), floor_ratio_q1=q1, floor_ratio_q3=q3,
            floor_target=FLOOR_TARGET.get(method) if not key.startswith("peft:") else None,
            peft_step_ms=med(peft.ms) * 1e3 if peft else float("nan"),
            peft_ratio=med(r_peft) if peft else float("nan"), peft_ratio_q1=p1, peft_ratio_q3=p3,
            peft_target=PEFT_TARGET.get(key) if peft else None,
            mem_mb=v.mem_bytes / 2**20, mem_floor_ratio=v.mem_bytes / floor.mem_bytes,
            mem_peft_ratio=v.mem_bytes / peft.mem_bytes if peft else float("nan"),
            mem_peft_target=MEM_PEFT_TARGET if peft else None,
            saved_mb=v.saved_bytes / 2**20, saved_floor_ratio=v.saved_bytes / floor.saved_bytes,
            saved_peft_ratio=v.saved_bytes / peft.saved_bytes if peft else float("nan"),
            eval_unmerged_ips=1.0 / med(v.eval_unmerged) if v.eval_unmerged else float("nan"),
            eval_merged_ips=1.0 / med(v.eval_merged) if v.eval_merged else float("nan"),
            rounds=rounds,
        ))
    return rows


def markdown(rows: list[dict], header: str, mem_label: str) -> str:
    out = [header, "",
           f"| adapter | trainable | step ms | ×floor | target | ×PEFT (PEFT ms) | target | {mem_label} MB | "
           f"mem ×floor | mem ×PEFT | saved MB | saved ×PEFT | eval img/s unmerged | merged |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ft, pt, mt = r["floor_target"], r["peft_target"], r["mem_peft_target"]
        peft = "—" if r["peft_ratio"] != r["peft_ratio"] else f"{r['peft_ratio']:.3f}{verdict(r['peft_ratio'], pt)} ({r['peft_step_ms']:.0f})"
        out.append(
            f"| {r['adapter']} | {r['trainable']:,} | {r['step_ms']:.1f} | "
            f"{r['floor_ratio']:.3f}{verdict(r['floor_ratio'], ft)} | {'≤ ' + format(ft, '.2f') if ft else ''} | "
            f"{peft} | {'≤ ' + format(pt, '.2f') if pt else ''} | {fmt(r['mem_mb'], '.0f')} | "
            f"{fmt(r['mem_floor_ratio'])} | {fmt(r['mem_peft_ratio'])}{verdict(r['mem_peft_ratio'], mt)} | "
            f"{fmt(r['saved_mb'], '.0f')} | {fmt(r['saved_peft_ratio'])} | "
            f"{fmt(r['eval_unmerged_ips'], '.1f')} | {fmt(r['eval_merged_ips'], '.1f')} |")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------
def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters", default=",".join(ALL), help="comma-separated adapter names (default: all twelve)")
    ap.add_argument("--model", default="vit_base_patch16_224", help="timm model name (random weights)")
    ap.add_argument("--tiny", action="store_true", help="a 32 px, 2-block, width-64 ViT: a quick smoke run")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--eval-batch", type=int, default=None, help="evaluation batch (default: --batch)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--inner", type=int, default=0, help="steps per timing (0: enough for ~--min-time s)")
    ap.add_argument("--min-time", type=float, default=0.2, help="seconds per timing when --inner 0")
    ap.add_argument("--max-seconds", type=float, default=0.0,
                    help="stop timing after the round that would overrun this many seconds since the start (0: no limit)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--amp", default="none", choices=["none", "bf16"], help="autocast dtype")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--no-peft", action="store_true", help="skip the PEFT references")
    ap.add_argument("--no-eval", action="store_true", help="skip evaluation throughput")
    ap.add_argument("--mem", default="auto", choices=["auto", "alloc", "rss", "cuda", "none"],
                    help="peak memory: cuda allocator (CUDA), live tensors via torch.profiler (CPU, the default "
                         "there), subprocess peak RSS (CPU), or none")
    ap.add_argument("--out-md", type=Path)
    ap.add_argument("--out-csv", type=Path)
    ap.add_argument("--dry-run", action="store_true", help="parse, resolve and print the plan, then exit")
    ap.add_argument("--_mem-worker", dest="_mem_worker", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> None:
    start = time.perf_counter()
    args = parse(argv)
    if args._mem_worker:
        return mem_worker(args)
    names = [n.strip() for n in args.adapters.split(",") if n.strip()]
    bad = [n for n in names if n not in adapters.available()]
    if bad:
        raise SystemExit(f"unknown adapters {bad}; valid: {', '.join(adapters.available())}")
    device = torch.device(args.device)
    mem = args.mem if args.mem != "auto" else ("cuda" if device.type == "cuda" else "alloc")
    if mem == "cuda" and device.type != "cuda":
        raise SystemExit("--mem cuda needs --device cuda")
    if mem in ("alloc", "rss") and device.type != "cpu":
        raise SystemExit(f"--mem {mem} measures CPU memory; use --mem cuda on a GPU")
    keys = ["floor"] + names
    if not args.no_peft:
        keys += [f"peft:{m}" for m in PEFT_METHODS if m in names]
    model_name = TINY["model"] + " (tiny: 32 px, 2 blocks, width 64)" if args.tiny else args.model
    if args.dry_run:
        print(f"plan: model {model_name}, device {device}, batch {args.batch}, amp {args.amp}, threads "
              f"{args.threads}, rounds {args.rounds}, memory {mem}\nvariants: {', '.join(keys)}")
        return
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = autocast_factory(args, device)

    base = make_base(args).to(device)
    x, y = batch(args, base, device, args.batch)
    xe, _ = batch(args, base, device, args.eval_batch or args.batch)
    t0 = time.perf_counter()
    variants = {}
    for k in keys:
        try:
            variants[k] = build(k, base, args.classes, device)
        except Exception as e:  # an old PEFT without this method (PVeRA needs PEFT >= 0.19), or no PEFT
            if not k.startswith("peft:"):
                raise
            print(f"  skipping {k}: {type(e).__name__}: {e}", file=sys.stderr)
    print(f"built {len(variants)} variants in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    # untimed warmup rounds (first calls are slow: lazy init, autotuning)
    inner = max(1, args.inner)
    warmup = max(1, args.warmup)
    for _ in range(warmup):
        last = []
        for v in variants.values():
            last.append(time_steps(v, x, y, autocast, 1, device))
            if not args.no_eval and not v.key.startswith("peft:") and v.key != "floor":
                time_eval(v, xe, autocast, 1, device, merged=False)
                if v.mergeable:
                    time_eval(v, xe, autocast, 1, device, merged=True)
    if args.inner == 0:  # about --min-time seconds for the median variant, from the last warmup round
        inner = min(50, max(1, math.ceil(args.min_time / max(statistics.median(last), 1e-6))))
    for v in variants.values():
        v.saved_bytes = saved_bytes(v, x, autocast)
        if mem == "cuda":
            v.mem_bytes = cuda_step_peak(v, base, x, y, autocast, device)
        elif mem == "alloc":
            v.mem_bytes = alloc_step_peak(v, base, x, y, autocast)
    print(f"timing {args.rounds} rounds x {len(variants)} variants, {inner} step(s) per timing", file=sys.stderr)

    order = list(variants.values())
    rounds, last_round = 0, 0.0
    for r in range(args.rounds):
        if args.max_seconds and time.perf_counter() - start + 1.2 * last_round > args.max_seconds and rounds >= 3:
            print(f"  stopping after {rounds} rounds: --max-seconds {args.max_seconds:g}", file=sys.stderr)
            break
        t = time.perf_counter()
        rot = order[r % len(order):] + order[: r % len(order)]
        for v in rot:
            v.ms.append(time_steps(v, x, y, autocast, inner, device))
            if not args.no_eval and not v.key.startswith("peft:") and v.key != "floor":
                v.eval_unmerged.append(time_eval(v, xe, autocast, inner, device, merged=False))
                if v.mergeable:
                    v.eval_merged.append(time_eval(v, xe, autocast, inner, device, merged=True))
        rounds, last_round = r + 1, time.perf_counter() - t
        print(f"  round {r + 1}/{args.rounds}: {last_round:.1f} s", file=sys.stderr)

    if mem == "rss":
        print("peak RSS: one subprocess per variant", file=sys.stderr)
        for v in variants.values():
            v.mem_bytes = rss_in_subprocess(v.key, args)

    rows = summarise(variants, names, rounds)
    mem_label = {"cuda": "peak CUDA", "alloc": "peak tensors", "rss": "peak RSS", "none": "peak"}[mem]
    header = (
        f"## Adapter training-step benchmark: {model_name}, random weights, {device.type}"
        f"{' ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}, batch {args.batch}, "
        f"{args.threads} threads, amp {args.amp}, {rounds} interleaved rounds x {inner} step(s); "
        f"torch {torch.__version__}\n\n"
        f"Command: `{' '.join(['python', 'scripts/bench_adapters.py'] + (sys.argv[1:] if argv is None else list(argv)))}`\n\n"
        "Ratios are medians over rounds of per-round ratios. floor = frozen backbone + head with one trainable "
        "scalar on the input image (backward through every block). PEFT = PEFT's own implementation applied to "
        "the fused `qkv` (target_modules=['qkv'], so it adapts q, k and v; ours q and v only); ia3: "
        "['qkv', 'fc2'], feedforward ['fc2']; same r; PEFT's PVeRA has no KL term. "
        + {"cuda": "Memory: peak torch.cuda.max_memory_allocated during a step above what was allocated before "
                   "it, plus the variant's own parameters, buffers and AdamW state (shared frozen weights excluded).",
           "alloc": "Memory: peak bytes of live tensors during one training step (torch.profiler memory "
                     "timeline, after a first step has created the AdamW state), shared frozen weights excluded.",
           "rss": "Memory: growth of peak RSS (VmHWM, reset before the steps) over 2 training steps, one fresh subprocess per variant, "
                  "model already built (frozen weights excluded; includes a few MB of allocator slack).",
           "none": "Memory: not measured."}[mem]
        + " saved MB: bytes autograd saves for backward in one forward (unique storages, frozen weights excluded). "
        f"Eval: images/s at batch {args.eval_batch or args.batch} under inference_mode, unmerged and with "
        "adapters.merge (merge time excluded). Targets (CPU, ViT-B/16, batch 4-8, 2 threads): ×floor as shown; "
        "×PEFT ≤ 1.00 for lora and vera, ≤ 1.05 for pvera; memory ≤ PEFT's. ✓/✗ mark a target met or missed. "
        "linear_probe's step runs the frozen backbone every step (the trainer caches its features instead)."
    )
    md = markdown(rows, header, mem_label)
    print(md)
    if args.out_md:
        args.out_md.parent.mkdir(parents=True, exist_ok=True)
        args.out_md.write_text(md)
    if args.out_csv:
        args.out_csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out_csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]) + ["model", "device", "batch", "threads", "amp", "inner", "mem_method"])
            w.writeheader()
            for r in rows:
                w.writerow({**r, "model": model_name, "device": device.type, "batch": args.batch, "threads": args.threads,
                            "amp": args.amp, "inner": inner, "mem_method": mem})

if __name__ == "__main__":
    main()
