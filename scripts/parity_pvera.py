"""Run the PVeRA paper's code beside ``recipe=pvera_paper_exact`` and compare them step by step.

    git clone https://github.com/leofillioux/pvera /tmp/pvera      # fetched by you
    PYTHONPATH=. python scripts/parity_pvera.py /tmp/pvera --adapter dora --epochs 3 --seed 1
    PYTHONPATH=. python scripts/parity_pvera.py /tmp/pvera --adapter dora --mutate adapter.norm_axis=row
    PYTHONPATH=. python scripts/parity_pvera.py /tmp/pvera --self-check      # must FAIL on each mutation

Both sides train the same tiny RANDOM ViT (``backbone=vit_tiny_random``; the code's
``torch.hub.load`` of DINOv2 is replaced by the same timm build) on synthetic images written in the
vtab-1k folder layout at ``--size`` px (40: both sides resize them to the model's 32, PIL bilinear),
task ``--task`` (eurosat, 10 classes) with the KL weight 1 / ``--beta`` (1: the KL term live) set on
both sides, 32 training and 32 validation images (two batches of 16 each), and a 3-point grid (VeRA /
PVeRA: lr grid ``VERA_LRS``; LoRA / DoRA: ranks ``RANKS``, small for the tiny model). The head's (and
LoRA's, DoRA's) lr is ``--lr`` on both sides (1e-2, above the code's 1e-4, so that the adapter's maths
moves the loss within a few steps; the self-check prints by how much each mutation moves it). The
checkout is copied to a scratch directory and only that copy is patched, where the code reaches the
network, a GPU or a missing package: ``torch.hub.load`` (network), the config files' paths / epochs /
worker count / ranks / lrs / beta / seed / image size (``config/*.yaml``), and two tiny stand-ins for
packages the shared venv lacks (``easydict.EasyDict`` and ``torchmetrics.Accuracy``: attribute access
and a top-1 accuracy). Nothing of it is committed.

Nothing is copied across: each side builds its model with its own code from the same seed. It prints,
for every grid candidate, whether its initial tensors (frozen projections, ``lambda_d``, LoRA / DoRA A
and B, DoRA's magnitude, head) are bit-identical; then every training step's loss of every candidate on
both sides, the per-epoch val losses, the learning rates, the chosen candidate and the kept epoch; and
PASS (every initial tensor bit-identical, every per-step loss within ``--tol``) or FAIL (exit 1).
``--mutate KEY=VALUE`` (repeatable) adds any project override to OUR side only. ``--self-check`` runs
the unmutated harness (must pass) and each mutation of ``SELF_CHECK`` (must fail) and prints the table.
PVeRA samples noise from the global RNG in the code (interleaved over candidates) and from
per-candidate generators here; the streams cannot be aligned, so ``--zero-noise`` (the default for
pvera) makes ``torch.randn_like`` return zeros on both sides (z = mu: the KL term and everything else
still run).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

TINY = dict(name="vit_tiny_random", model="vit_tiny_patch16_224", pretrained=False, checkpoint=None,
            kwargs=dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=2))
IMG = 32  # the tiny model's input
RANKS = [2, 4, 8]  # LoRA and DoRA grid (both sides)
VERA_LRS = [1e-2, 1e-3, 1e-4]  # VeRA / PVeRA adapter lr grid (both sides)
SIZES = {"train800": 32, "val200": 32, "test": 16}  # batch 16: two training steps, two validation batches
# (adapter, our override): each must make the harness FAIL
SELF_CHECK = [("dora", "adapter.norm_axis=row"),       # DoRA's norm axis (the code: dim 0, per input column)
              ("dora", "adapter.init=peft"),           # DoRA's A: not the code's draws
              ("pvera", "task.pvera_beta=10"),         # the KL weight (1 / beta)
              ("vera", "adapter.draws=run"),           # the grid's candidate draws (every candidate the same)
              ("lora", "adapter.draws=run")]


@dataclass
class Harness:
    adapter: str = "vera"
    epochs: int = 3
    seed: int = 0
    task: str = "eurosat"
    classes: int = 10
    beta: float = 1.0
    size: int = 40
    lr: float = 1e-2
    zero_noise: bool = False
    mutate: list[str] = field(default_factory=list)


# A stand-in for easydict (absent from the shared venv), for the PVeRA and NOAH harnesses alike:
# a dict whose items are also attributes, nested dicts converted.
EASYDICT = ("class EasyDict(dict):\n"
            "    def __init__(self, d=None):\n"
            "        super().__init__()\n"
            "        for k, v in (d or {}).items():\n"
            "            self[k] = v\n"
            "    def __setitem__(self, k, v):\n"
            "        if isinstance(v, dict) and not isinstance(v, EasyDict):\n"
            "            v = EasyDict(v)\n"
            "        super().__setitem__(k, v)\n"
            "    def __getattr__(self, k):\n"
            "        try:\n"
            "            return self[k]\n"
            "        except KeyError as e:\n"
            "            raise AttributeError(k) from e\n"
            "    def __setattr__(self, k, v):\n"
            "        self[k] = v\n")


def shims(where: Path) -> None:
    """Stand-ins for easydict and torchmetrics (absent from the shared venv)."""
    (where / "easydict.py").write_text(EASYDICT)
    (where / "torchmetrics.py").write_text(
        "import torch\n"
        "class Accuracy:\n"
        "    def __init__(self, **kw):\n"
        "        pass\n"
        "    def __call__(self, preds, target):\n"
        "        return (preds == target).float().mean()\n")


def scratch_copy(src: Path, work: Path, data_dir: Path, h: "Harness") -> Path:
    dst = work / "pvera_code"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".git"))
    shims(dst)
    tr = yaml.safe_load((dst / "config/training.yaml").read_text())
    tr.update(seeds=[h.seed], save_dir=str(work / "saved"), results_dir=str(work / "results"), num_workers=0,
              num_epochs=h.epochs, patience=max(h.epochs, 20))
    tr["optimizer"]["params"]["lr"] = h.lr  # heads and LoRA / DoRA (utils/train.py: config.optimizer.params)
    tr["beta"][h.task] = h.beta  # the KL weight is 1 / beta (utils/train.py)
    (work / "saved").mkdir()
    (work / "results").mkdir()
    (dst / "config/training.yaml").write_text(yaml.safe_dump(tr))
    ds = yaml.safe_load((dst / "config/datasets.yaml").read_text())
    ds.update(data_dir=str(data_dir), img_size=[IMG, IMG])  # images written at --size px: a real resize
    (dst / "config/datasets.yaml").write_text(yaml.safe_dump(ds))
    ad = yaml.safe_load((dst / "config/adapters.yaml").read_text())
    ad["lora"]["rank"] = ad["dora"]["rank"] = RANKS
    ad["vera"]["rank"] = ad["pvera"]["rank"] = 8
    ad["vera"]["lr"] = ad["pvera"]["lr"] = VERA_LRS
    (dst / "config/adapters.yaml").write_text(yaml.safe_dump(ad))
    return dst


class Recorder:
    """Training-step losses per candidate, from the cross-entropy calls made with grad enabled."""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.val: list[float] = []


def run_code(code: Path, h: Harness, rec: Recorder):
    from pvera_bench.backbones import create_backbone

    sys.path.insert(0, str(code))
    for m in [m for m in sys.modules if m.split(".")[0] in ("config", "models", "utils", "datasets")]:
        del sys.modules[m]
    torch.hub.load = lambda *a, **k: create_backbone(TINY)  # the network: the same timm build as ours
    base_ce = torch.nn.CrossEntropyLoss

    class CE(base_ce):
        def forward(self, pred, y):
            out = super().forward(pred, y)
            # training steps have a graph; the code's val losses are computed outside no_grad but on
            # predictions made under it
            (rec.steps if out.requires_grad else rec.val).append(float(out.detach()))
            return out

    torch.nn.CrossEntropyLoss = CE
    built = {}
    import models as code_models  # noqa: E402  (the scratch copy)
    orig_init = code_models.Model.__init__

    def init(self, *a, **k):
        orig_init(self, *a, **k)
        built["initial"] = {n: t.detach().clone() for n, t in self.state_dict().items()}
        built["frozen"] = {}
        for b, blk in enumerate(self.backbone.blocks):
            heads = blk.attn.qkv.heads
            for j, hd in enumerate(heads if isinstance(heads, torch.nn.ModuleList) else [heads]):
                for name in ("q_downsample", "v_downsample", "q_upsample", "v_upsample"):
                    if hasattr(hd, name):
                        built["frozen"][f"{b}.{j}.{name}"] = getattr(hd, name).clone()

    code_models.Model.__init__ = init
    sys.argv = ["train.py", "-d", h.task, "-m", "DINOv2", "-a", h.adapter]
    try:
        with noise_off(h.zero_noise), contextlib.redirect_stdout(sys.stderr):
            import runpy
            runpy.run_path(str(code / "train.py"), run_name="__main__")
    finally:
        torch.nn.CrossEntropyLoss = base_ce
        code_models.Model.__init__ = orig_init
        sys.path.remove(str(code))
    result = json.loads(next((code.parent / "results").glob("*.json")).read_text())
    return built, result


@contextlib.contextmanager
def noise_off(on: bool):
    if not on:
        yield
        return
    orig = torch.randn_like
    torch.randn_like = lambda t, *a, **k: torch.zeros_like(t, *a, **k)
    try:
        yield
    finally:
        torch.randn_like = orig


def with_mutations(overrides: list[str], mutations: list[str]) -> list[str]:
    """``overrides`` with each ``KEY=VALUE`` of ``mutations`` replacing the same key's (else appended)."""
    out = list(overrides)
    for m in mutations:
        key = m.split("=", 1)[0]
        out = [o for o in out if o.split("=", 1)[0] != key] + [m]
    return out


def run_ours(data_dir: Path, h: Harness, work: Path):
    from hydra import compose, initialize_config_dir

    from pvera_bench import run as run_mod
    from pvera_bench import train as train_mod
    from pvera_bench.paths import config_dir

    n = SIZES["train800"] + SIZES["val200"]
    overrides = [f"adapter={h.adapter}", "recipe=pvera_paper_exact", f"task={h.task}", "backbone=vit_tiny_random",
                 "backbone.pos_embed=timm", f"data.dir={data_dir}", f"data.cache_dir={work / 'cache'}",
                 "data.resize=bilinear", f"trainer.epochs={h.epochs}", f"protocol.patience={max(h.epochs, 20)}",
                 "runtime.progress=false", "runtime.device=cpu", f"seed={h.seed}", f"backbone.init_seed={h.seed}",
                 f"task.pvera_beta={h.beta}", f"trainer.lr_head={h.lr}",
                 f"task.sizes={{train800: {SIZES['train800']}, val200: {SIZES['val200']}, train800val200: {n}, "
                 f"test: {SIZES['test']}}}"]
    if h.adapter in ("lora", "dora"):
        overrides += [f"protocol.grid={{adapter.r: {RANKS}}}", f"trainer.lr_adapter={h.lr}"]
    else:
        overrides += ["adapter.r=8", f"protocol.grid={{trainer.lr_adapter: {VERA_LRS}}}"]
    overrides = with_mutations(overrides, h.mutate)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    trainers, losses = [], {}
    orig_init, orig_loss = train_mod.Trainer.__init__, train_mod.Trainer._loss

    def init(self, *a, **k):
        orig_init(self, *a, **k)
        trainers.append(self)
        self._initial = {n: t.detach().clone() for n, t in self.model.state_dict().items()}

    def loss(self, logits, y):
        out = orig_loss(self, logits, y)
        if torch.is_grad_enabled():
            losses.setdefault(trainers.index(self), []).append(float(out.detach()))
        return out

    train_mod.Trainer.__init__, train_mod.Trainer._loss = init, loss
    run_dir = work / "ours"
    run_dir.mkdir()
    try:
        with noise_off(h.zero_noise):
            row = run_mod.execute(cfg, run_dir)
    finally:
        train_mod.Trainer.__init__, train_mod.Trainer._loss = orig_init, orig_loss
    return trainers, losses, row, cfg


def adapter_pairs(adapter: str, ours: dict, init: dict, frozen: dict, b: int, j: int) -> list[tuple]:
    """(ours, the code's) tensors of block ``b``, candidate ``j``, that must be bit-identical."""
    pre, h = f"backbone.blocks.{b}.attn.qkv", f"backbone.blocks.{b}.attn.qkv.heads.{j}"
    if adapter in ("vera", "pvera"):
        f, shared = frozen, f"backbone.{adapter}_shared"
        return [(ours[f"{shared}.A"], torch.cat((f[f"{b}.{j}.q_downsample"], f[f"{b}.{j}.v_downsample"]), 1)),
                (ours[f"{shared}.B"], torch.stack((f[f"{b}.{j}.q_upsample"], f[f"{b}.{j}.v_upsample"]))),
                (ours[f"{pre}.lambda_d"], torch.cat((init[f"{h}.adapter_qd"], init[f"{h}.adapter_vd"]))),
                (ours[f"{pre}.lambda_b"], torch.stack((init[f"{h}.adapter_qb"], init[f"{h}.adapter_vb"])))]
    if adapter == "lora":
        return [(ours[f"{pre}.lora_A"], torch.cat((init[f"{h}.adapter_Q_downsample"], init[f"{h}.adapter_V_downsample"]), 1)),
                (ours[f"{pre}.lora_B"], torch.stack((init[f"{h}.adapter_Q_upsample"], init[f"{h}.adapter_V_upsample"])))]
    # dora: ours dW_k = (lora_A lora_B_k)^T with lora_B_k = A_k^T, lora_A = 0; the code's dW_k = A_k B_k, B_k = 0
    return [(ours[f"{pre}.lora_B"], torch.stack((init[f"{h}.adapter_A_q"].t(), init[f"{h}.adapter_A_v"].t()))),
            (ours[f"{pre}.lora_A"], torch.cat((init[f"{h}.adapter_B_q"].t(), init[f"{h}.adapter_B_v"].t()), 1)),
            (ours[f"{pre}.magnitude"], torch.cat((init[f"{h}.mag_q"], init[f"{h}.mag_v"])))]


def compare_initial(adapter: str, built: dict, trainers: list) -> tuple[bool, list[str]]:
    """Candidate j's initial tensors on both sides, bit for bit."""
    init, lines, every = built["initial"], [], True
    for j, t in enumerate(trainers):
        ours = t._initial
        head = all(torch.equal(ours[f"head.{k}"], init[f"prediction_head.heads.{j}.linear.{k}"]) for k in ("weight", "bias"))
        same = [a.shape == b.shape and torch.equal(a, b) for blk in range(TINY["kwargs"]["depth"])
                for a, b in adapter_pairs(adapter, ours, init, built["frozen"], blk, j)]
        every = every and head and all(same)
        lines.append(f"candidate {j}: adapter tensors of {TINY['kwargs']['depth']} blocks bit-identical: {all(same)} "
                     f"({sum(same)}/{len(same)}); head bit-identical: {head}")
    return every, lines


def run_pair(checkout: Path, h: Harness, code_cache: dict | None = None, tol: float = 1e-5, quiet: bool = False) -> dict:
    """One comparison; returns ``dict(ok, initial, worst, worst_val, lines)``. ``code_cache``: the code's
    side per (adapter, seed), reused across mutations of ours (it does not depend on them)."""
    from helpers_data import make_folder_tree

    out: list[str] = []
    with tempfile.TemporaryDirectory(prefix="parity_pvera_") as tmp:
        work = Path(tmp)
        data = make_folder_tree(work / "vtab-1k", h.task, n_per_split=SIZES, num_classes=h.classes, size=h.size,
                                seed=0)
        key = (h.adapter, h.seed)
        if code_cache is not None and key in code_cache:
            rec, built, result = code_cache[key]
        else:
            code = scratch_copy(checkout, work, data, h)
            rec = Recorder()
            built, result = run_code(code, h, rec)
            if code_cache is not None:
                code_cache[key] = rec, built, result
        trainers, ours, row, cfg = run_ours(data, h, work)
        n = len(RANKS if h.adapter in ("lora", "dora") else VERA_LRS)
        out.append(f"== {h.adapter}: {n} grid candidates, {h.epochs} epochs, seed {h.seed}, task {h.task} "
                   f"(beta {h.beta}), {h.size} px -> {IMG}, lr {h.lr}, zero noise: {h.zero_noise}, "
                   f"our mutations: {h.mutate or 'none'}; nothing copied across")
        initial, lines = compare_initial(h.adapter, built, trainers[:n])
        out += lines
        theirs = {j: rec.steps[j::n] for j in range(n)}
        worst = 0.0
        out.append("step  " + "  ".join(f"code[{j}]      ours[{j}]     " for j in range(n)))
        for s in range(max(len(theirs[0]), max(len(v) for v in ours.values()))):
            cells = []
            for j in range(n):
                a = theirs[j][s] if s < len(theirs[j]) else float("nan")
                b = ours[j][s] if s < len(ours.get(j, [])) else float("nan")
                d = abs(a - b)
                worst = max(worst, d) if d == d else float("inf")
                cells.append(f"{a:.8f} {b:.8f}")
            out.append(f"{s:4d}  " + "  ".join(cells))
        out.append(f"max |per-step loss difference|: {worst:.3e} over {len(theirs[0])} steps x {n} candidates")
        vals = {j: rec.val[j::n] for j in range(n)}
        hist = list(csv.DictReader(open(work / "ours" / "history.csv")))
        per = len(vals[0]) // h.epochs
        worst_val = 0.0
        for e in range(h.epochs):
            code_v = [float(np.mean(vals[j][e * per:(e + 1) * per])) for j in range(n)]
            mine = [next(float(r["val_loss"]) for r in hist if r["fit"] == f"select-{j}" and int(r["epoch"]) == e + 1)
                    for j in range(n)]
            lrs = [next(float(r["lr"]) for r in hist if r["fit"] == f"select-{j}" and int(r["epoch"]) == e + 1)
                   for j in range(n)]
            worst_val = max([worst_val] + [abs(a - b) for a, b in zip(code_v, mine)])
            out.append(f"epoch {e + 1}: val loss ({per} batches) code " + " ".join(f"{v:.7f}" for v in code_v)
                       + " | ours " + " ".join(f"{v:.7f}" for v in mine) + " | our adapter lr "
                       + " ".join(f"{v:g}" for v in lrs))
        out.append(f"max |per-epoch val loss difference|: {worst_val:.3e} (the code's lr: constant, its grid's)")
        out.append(f"code: chosen {result.get('best_grid_search')}, kept epoch {result.get('best_epoch') + 1} (1-based)")
        out.append(f"ours: chosen {row['chosen']}, kept epoch {row['best_epoch']} (1-based)")
    ok = initial and worst <= tol
    out.append(f"{'PASS' if ok else 'FAIL'}: initial tensors bit-identical: {initial}; max per-step loss difference "
               f"{worst:.3e} {'<=' if worst <= tol else '>'} {tol:g}")
    if not quiet:
        print("\n".join(out), flush=True)
    return dict(ok=ok, initial=initial, worst=worst, worst_val=worst_val, lines=out)


def self_check(checkout: Path, base: Harness, tol: float) -> bool:
    """The unmutated harness passes for every adapter of ``SELF_CHECK``; each mutation fails."""
    cache: dict = {}
    rows, good = [], True
    for adapter in dict.fromkeys(a for a, _ in SELF_CHECK):
        h = replace(base, adapter=adapter, zero_noise=base.zero_noise or adapter == "pvera", mutate=[])
        r = run_pair(checkout, h, cache, tol, quiet=True)
        rows.append((adapter, "(none)", r, r["ok"]))
        good &= r["ok"]
    for adapter, m in SELF_CHECK:
        h = replace(base, adapter=adapter, zero_noise=base.zero_noise or adapter == "pvera", mutate=[m])
        r = run_pair(checkout, h, cache, tol, quiet=True)
        rows.append((adapter, m, r, not r["ok"]))
        good &= not r["ok"]
    print(f"| adapter | our mutation | initial tensors bit-identical | max per-step loss diff | harness says | expected |")
    print("|---|---|---|---|---|---|")
    for adapter, m, r, as_expected in rows:
        print(f"| {adapter} | `{m}` | {r['initial']} | {r['worst']:.3e} | {'PASS' if r['ok'] else 'FAIL'} | "
              f"{'PASS' if m == '(none)' else 'FAIL'}{'' if as_expected else '  <-- NOT AS EXPECTED'} |")
    print(f"self-check: {'OK' if good else 'BROKEN'} (epochs {base.epochs}, seed {base.seed}, tol {tol:g})")
    return good


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkout", type=Path, help="a checkout of github.com/leofillioux/pvera")
    ap.add_argument("--adapter", choices=("vera", "pvera", "lora", "dora"), default="vera")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--task", default="eurosat", help="a VTAB-1k task name both sides know (10 classes assumed "
                                                     "unless --classes)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--beta", type=float, default=1.0, help="the KL weight is 1 / beta, on both sides")
    ap.add_argument("--size", type=int, default=40, help=f"px of the written images (resized to {IMG})")
    ap.add_argument("--lr", type=float, default=1e-2, help="the heads' (and LoRA's, DoRA's) lr on both sides")
    ap.add_argument("--tol", type=float, default=1e-5, help="max per-step loss difference that passes")
    ap.add_argument("--zero-noise", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--mutate", action="append", default=[], metavar="KEY=VALUE",
                    help="a project override applied to our side only (repeatable)")
    ap.add_argument("--self-check", action="store_true", help="run SELF_CHECK: unmutated must pass, each mutation fail")
    args = ap.parse_args()
    zero = args.zero_noise == "on" or (args.zero_noise == "auto" and args.adapter == "pvera")
    torch.set_num_threads(1)
    h = Harness(args.adapter, args.epochs, args.seed, args.task, args.classes, args.beta, args.size, args.lr,
                zero, args.mutate)
    if args.self_check:
        sys.exit(0 if self_check(args.checkout, replace(h, zero_noise=args.zero_noise == "on"), args.tol) else 1)
    sys.exit(0 if run_pair(args.checkout, h, tol=args.tol)["ok"] else 1)


if __name__ == "__main__":
    main()
