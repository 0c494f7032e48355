"""Run the PVeRA paper's code beside ``recipe=pvera_paper_exact`` and compare them step by step.

    git clone https://github.com/leofillioux/pvera /tmp/pvera      # fetched by you
    PYTHONPATH=. python scripts/parity_pvera.py /tmp/pvera --adapter vera --epochs 4

Both sides train the same tiny RANDOM ViT (``backbone=vit_tiny_random``; the code's
``torch.hub.load`` of DINOv2 is replaced by the same timm build) on synthetic images written in the
vtab-1k folder layout (task ``dtd``, 47 classes), with a 3-point grid (VeRA / PVeRA: the code's lr
grid; LoRA: ranks 2, 4, 8 in both, small for the tiny model). The checkout is copied to a scratch
directory and only that copy is patched, where the code reaches the network, a GPU or a missing
package: ``torch.hub.load`` (network), the config files' paths / epochs / worker count / rank
(``config/*.yaml``), and two tiny stand-ins for packages the shared venv lacks (``easydict.EasyDict``
and ``torchmetrics.Accuracy``: attribute access and a top-1 accuracy). Nothing of it is committed.

It prints, for every grid candidate, whether its initial tensors (frozen projections, ``lambda_d`` /
LoRA A, head) are bit-identical, built independently on each side (nothing copied across); then
every training step's loss of every candidate on both sides, the per-epoch val losses, the learning
rates, the chosen candidate and the kept epoch. PVeRA samples noise from the global RNG in the code
(interleaved over candidates) and from per-candidate generators here; the streams cannot be aligned,
so ``--zero-noise`` (the default for pvera) makes ``torch.randn_like`` return zeros on both sides
(z = mu: the KL term and everything else still run).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

TINY = dict(name="vit_tiny_random", model="vit_tiny_patch16_224", pretrained=False, checkpoint=None,
            kwargs=dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=2))
LORA_RANKS = [2, 4, 8]


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


def scratch_copy(src: Path, work: Path, data_dir: Path, adapter: str, epochs: int) -> Path:
    dst = work / "pvera_code"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".git"))
    shims(dst)
    tr = yaml.safe_load((dst / "config/training.yaml").read_text())
    tr.update(seeds=[0], save_dir=str(work / "saved"), results_dir=str(work / "results"), num_workers=0,
              num_epochs=epochs, patience=max(epochs, 20))
    (work / "saved").mkdir()
    (work / "results").mkdir()
    (dst / "config/training.yaml").write_text(yaml.safe_dump(tr))
    ds = yaml.safe_load((dst / "config/datasets.yaml").read_text())
    ds.update(data_dir=str(data_dir), img_size=[32, 32])
    (dst / "config/datasets.yaml").write_text(yaml.safe_dump(ds))
    ad = yaml.safe_load((dst / "config/adapters.yaml").read_text())
    ad["lora"]["rank"] = LORA_RANKS
    ad["vera"]["rank"] = ad["pvera"]["rank"] = 8
    (dst / "config/adapters.yaml").write_text(yaml.safe_dump(ad))
    return dst


class Recorder:
    """Training-step losses per candidate, from the cross-entropy calls made with grad enabled."""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.val: list[float] = []


def run_code(code: Path, adapter: str, rec: Recorder, zero_noise: bool):
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
        built["model"] = self
        built["initial"] = {n: t.detach().clone() for n, t in self.state_dict().items()}
        built["frozen"] = {}
        for b, blk in enumerate(self.backbone.blocks):
            heads = blk.attn.qkv.heads
            for j, h in enumerate(heads if isinstance(heads, torch.nn.ModuleList) else [heads]):
                for name in ("q_downsample", "v_downsample", "q_upsample", "v_upsample"):
                    if hasattr(h, name):
                        built["frozen"][f"{b}.{j}.{name}"] = getattr(h, name).clone()

    code_models.Model.__init__ = init
    sys.argv = ["train.py", "-d", "dtd", "-m", "DINOv2", "-a", adapter]
    try:
        with noise_off(zero_noise):
            import runpy
            runpy.run_path(str(code / "train.py"), run_name="__main__")
    finally:
        torch.nn.CrossEntropyLoss = base_ce
        sys.path.remove(str(code))
    import json
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


def run_ours(data_dir: Path, adapter: str, epochs: int, work: Path, zero_noise: bool):
    from hydra import compose, initialize_config_dir

    from pvera_bench import run as run_mod
    from pvera_bench import train as train_mod
    from pvera_bench.paths import config_dir

    overrides = [f"adapter={adapter}", "recipe=pvera_paper_exact", "task=dtd", "backbone=vit_tiny_random",
                 "backbone.pos_embed=timm", f"data.dir={data_dir}", f"data.cache_dir={work / 'cache'}",
                 "data.resize=bilinear", f"trainer.epochs={epochs}", f"protocol.patience={max(epochs, 20)}",
                 "runtime.progress=false", "runtime.device=cpu", "seed=0", "backbone.init_seed=0",
                 "task.sizes={train800: 32, val200: 16, train800val200: 48, test: 16}"]
    if adapter == "lora":
        overrides.append(f"protocol.grid={{adapter.r: {LORA_RANKS}}}")
    else:
        overrides.append("adapter.r=8")
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
        with noise_off(zero_noise):
            row = run_mod.execute(cfg, run_dir)
    finally:
        train_mod.Trainer.__init__, train_mod.Trainer._loss = orig_init, orig_loss
    return trainers, losses, row, cfg


def compare_initial(adapter: str, built: dict, trainers: list) -> list[str]:
    """Candidate j's initial tensors on both sides, bit for bit."""
    init = built["initial"]
    lines = []
    for j, t in enumerate(trainers):
        ours = t._initial
        checks = {"head.weight": init[f"prediction_head.heads.{j}.linear.weight"],
                  "head.bias": init[f"prediction_head.heads.{j}.linear.bias"]}
        same = []
        for b in range(4):
            pre = f"backbone.blocks.{b}.attn.qkv"
            h = f"{pre}.heads.{j}"
            if adapter in ("vera", "pvera"):
                f = built["frozen"]
                shared = f"backbone.{adapter}_shared"
                same.append(torch.equal(ours[f"{shared}.A"], torch.cat((f[f"{b}.{j}.q_downsample"], f[f"{b}.{j}.v_downsample"]), 1)))
                same.append(torch.equal(ours[f"{shared}.B"], torch.stack((f[f"{b}.{j}.q_upsample"], f[f"{b}.{j}.v_upsample"]))))
                same.append(torch.equal(ours[f"{pre}.lambda_d"], torch.cat((init[f"{h}.adapter_qd"], init[f"{h}.adapter_vd"]))))
                same.append(torch.equal(ours[f"{pre}.lambda_b"], torch.stack((init[f"{h}.adapter_qb"], init[f"{h}.adapter_vb"]))))
            else:
                same.append(torch.equal(ours[f"{pre}.lora_A"], torch.cat((init[f"{h}.adapter_Q_downsample"],
                                                                          init[f"{h}.adapter_V_downsample"]), 1)))
                same.append(torch.equal(ours[f"{pre}.lora_B"], torch.stack((init[f"{h}.adapter_Q_upsample"],
                                                                            init[f"{h}.adapter_V_upsample"]))))
        head = all(torch.equal(ours[k], v) for k, v in checks.items())
        lines.append(f"candidate {j}: adapter tensors of 4 blocks bit-identical: {all(same)} ({sum(same)}/{len(same)}); "
                     f"head bit-identical: {head}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkout", type=Path, help="a checkout of github.com/leofillioux/pvera")
    ap.add_argument("--adapter", choices=("vera", "pvera", "lora"), default="vera")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--zero-noise", choices=("auto", "on", "off"), default="auto")
    args = ap.parse_args()
    zero = args.zero_noise == "on" or (args.zero_noise == "auto" and args.adapter == "pvera")
    from helpers_data import make_folder_tree

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="parity_pvera_") as tmp:
        work = Path(tmp)
        data = make_folder_tree(work / "vtab-1k", "dtd", n_per_split={"train800": 32, "val200": 16, "test": 16},
                                num_classes=47, size=32)
        code = scratch_copy(args.checkout, work, data, args.adapter, args.epochs)
        rec = Recorder()
        built, result = run_code(code, args.adapter, rec, zero)
        trainers, ours, row, cfg = run_ours(data, args.adapter, args.epochs, work, zero)
        n = len(cfg.protocol.grid and next(iter(cfg.protocol.grid.values())))
        print(f"== {args.adapter}: {n} grid candidates, {args.epochs} epochs, zero noise: {zero}")
        for line in compare_initial(args.adapter, built, trainers[:n]):
            print(line)
        theirs = {j: rec.steps[j::n] for j in range(n)}
        worst = 0.0
        print("step  " + "  ".join(f"code[{j}]      ours[{j}]     " for j in range(n)))
        for s in range(len(theirs[0])):
            cells = []
            for j in range(n):
                a, b = theirs[j][s], ours[j][s] if s < len(ours.get(j, [])) else float("nan")
                worst = max(worst, abs(a - b))
                cells.append(f"{a:.8f} {b:.8f}")
            print(f"{s:4d}  " + "  ".join(cells))
        print(f"max |per-step loss difference|: {worst:.3e} over {len(theirs[0])} steps x {n} candidates")
        vals = {j: rec.val[j::n] for j in range(n)}
        import csv
        hist = list(csv.DictReader(open(work / "ours" / "history.csv")))
        per = len(vals[0]) // args.epochs
        worst_val = 0.0
        for e in range(args.epochs):
            code_v = [float(np.mean(vals[j][e * per:(e + 1) * per])) for j in range(n)]
            mine = [next(float(h["val_loss"]) for h in hist if h["fit"] == f"select-{j}" and int(h["epoch"]) == e + 1)
                    for j in range(n)]
            lrs = [next(float(h["lr"]) for h in hist if h["fit"] == f"select-{j}" and int(h["epoch"]) == e + 1)
                   for j in range(n)]
            worst_val = max([worst_val] + [abs(a - b) for a, b in zip(code_v, mine)])
            print(f"epoch {e + 1}: val loss code " + " ".join(f"{v:.7f}" for v in code_v) + " | ours "
                  + " ".join(f"{v:.7f}" for v in mine) + " | our adapter lr " + " ".join(f"{v:g}" for v in lrs))
        print(f"max |per-epoch val loss difference|: {worst_val:.3e} (the code's lr: constant, its grid's)")
        print(f"code: chosen {result.get('best_grid_search')}, kept epoch {result.get('best_epoch') + 1} (1-based)")
        print(f"ours: chosen {row['chosen']}, kept epoch {row['best_epoch']} (1-based)")


if __name__ == "__main__":
    main()
