"""Run NOAH's code beside ``recipe=noah adapter=bottleneck`` and compare them step by step.

    git clone https://github.com/ZhangYuanhan-AI/NOAH /tmp/noah              # fetched by you
    pip install --no-deps --target /tmp/timm054 timm==0.5.4                # NOAH's timm (requirements.txt)
    PYTHONPATH=. python scripts/parity_noah.py /tmp/noah --timm /tmp/timm054 --epochs 3

Both sides train the same tiny RANDOM ViT (32 px, patch 8, width 64, 4 blocks, 2 heads: our
``backbone=vit_tiny_random``; on NOAH's side its own ``VisionTransformer`` with those sizes, added
to its ``model`` namespace as ``vit_tiny_random``) with NOAH's Adapter (width 8 after the MLP
branch's drop path, QuickGELU, dropout 0.1), drop path 0.1, on synthetic images written in the
vtab-1k folder layout (task ``dtd``, 47 classes; NOAH trains on train800val200 and tests on test).
NOAH's side runs its own ``supernet_train_prompt.py`` (its Adapter command line of
configs/Adapter/VTAB/slurm_train_adapter_vtab.sh, smaller) in a subprocess with timm 0.5.4 first
on ``sys.path``.

The checkout is copied to a scratch directory and only that copy is touched, where the code
reaches a GPU or a package the shared venv lacks: ``torch.cuda.synchronize`` (called every step)
is a no-op, ``--device cpu``; ``model/utils.py`` imports ``container_abcs`` from ``torch._six``
(gone from torch 2) and gets it from ``collections.abc``; tiny stand-ins for ``easydict.EasyDict``,
``mmcv.runner`` (its ``get_dist_info``/``init_dist``; only ``--launcher none`` runs) and the unused
imports ``cv2`` and ``skimage.io``; the experiment yaml names the tiny model and depth 4. Nothing
of it is committed.

What is aligned, and how (the harness's own choices, printed in its output):

- initial tensors: COPIED from ours to NOAH's through NOAH's own ``--resume x.pth`` path
  (``load_checkpoint(strict=False)`` after ``reset_classifier``), then checked bit for bit at the
  first step. NOAH's real runs load the backbone through ``--resume`` too; its adapters are drawn
  inside its model's init, module by module, ours after the backbone, so those are copied as well.
- the data order: NOAH's ``RandomSampler`` is replaced by one replaying our order of every epoch
  (ours draws it from its own generator, NOAH's from the global RNG).
- the global torch RNG (dropout and drop path): its state at the start of each epoch's first
  forward is handed from ours to NOAH's (set when NOAH's sampler yields its first index, after the
  DataLoader's own seed draw). Within the epoch both models consume it in the same order (block
  by block: drop path of the attention branch, drop path of the MLP branch, the adapter's dropout).
  Handed over once only (before epoch 1), epoch 2 on differs (up to 5.6e-3 in a 3-epoch run):
  between epochs each DataLoader iterator of NOAH's (train and test) draws its base seed from the
  global RNG, while ours continues from the end of the epoch's training (its evaluation forks the RNG).
- drop path's mask is drawn the same way by timm 0.5.4 and timm 1.x
  (``x.new_empty((B, 1, 1)).bernoulli_(keep)``, divided by keep), nothing is changed there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from parity_pvera import EASYDICT  # the easydict stand-in both harnesses write (scripts/ is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"train800": 8, "val200": 8, "test": 8}  # NOAH trains on train800val200: 16 images
TINY = dict(patch_size=8, embed_dim=64, depth=4, num_heads=2, mlp_ratio=4.0, qkv_bias=True)  # backbone=vit_tiny_random


# ---------------------------------------------------------------------------------------------
# our side (in this process)

def run_ours(data_dir: Path, work: Path, args) -> dict:
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from hydra import compose, initialize_config_dir

    from pvera_bench import run as run_mod
    from pvera_bench import train as train_mod
    from pvera_bench.paths import config_dir

    n_train = SIZES["train800"] + SIZES["val200"]
    overrides = ["adapter=bottleneck", "recipe=noah", "task=dtd", "backbone=vit_tiny_random",
                 f"backbone.drop_path_rate={args.drop_path}", f"adapter.dropout={args.dropout}",
                 f"data.dir={data_dir}", f"data.cache_dir={work / 'cache'}", f"trainer.epochs={args.epochs}",
                 f"trainer.batch_size={args.batch_size}", "runtime.progress=false", "runtime.device=cpu", "seed=0",
                 f"task.sizes={{train800: {SIZES['train800']}, val200: {SIZES['val200']}, "
                 f"train800val200: {n_train}, test: {SIZES['test']}}}"]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    rec: dict = {"losses": [], "orders": [], "rngs": [], "lrs": [], "initial": None, "cfg": cfg}
    orig_loss, orig_epoch = train_mod.Trainer._loss, train_mod.Trainer._train_epoch

    def loss(self, logits, y):
        out = orig_loss(self, logits, y)
        if torch.is_grad_enabled() and getattr(self, "_parity_final", False):
            rec["losses"].append(float(out.detach()))
        return out

    def train_epoch(self, forward, inputs, labels, order, *a, **k):
        self._parity_final = len(order) == n_train  # the fit on train800val200 (NOAH's)
        if self._parity_final:
            if rec["initial"] is None:
                rec["initial"] = {n: t.detach().clone() for n, t in self.model.state_dict().items()}
            rec["orders"].append(order.tolist())
            rec["rngs"].append(torch.get_rng_state())
            rec["lrs"].append([g["lr"] for g in a[0].param_groups])  # a[0]: the optimiser, stepped to this epoch
        return orig_epoch(self, forward, inputs, labels, order, *a, **k)

    train_mod.Trainer._loss, train_mod.Trainer._train_epoch = loss, train_epoch
    run_dir = work / "ours"
    run_dir.mkdir()
    try:
        run_mod.execute(cfg, run_dir)
    finally:
        train_mod.Trainer._loss, train_mod.Trainer._train_epoch = orig_loss, orig_epoch
    return rec


def to_noah(state: dict) -> dict:
    """Our Classifier's state dict under NOAH's names (blocks.i.drop_path2.adapter.{down,up} ->
    blocks.i.adapter.{ln1,ln2}; the backbone and head otherwise under the same timm names)."""
    out = {}
    for k, v in state.items():
        k = k.removeprefix("backbone.").removeprefix("model.")
        k = k.replace("drop_path2.adapter.down", "adapter.ln1").replace("drop_path2.adapter.up", "adapter.ln2")
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# NOAH's side (a subprocess: timm 0.5.4 first on sys.path)

STUBS = {
    "easydict.py": EASYDICT,
    "mmcv/__init__.py": "",
    "mmcv/runner.py": ("def get_dist_info():\n    return 0, 1\n"
                       "def init_dist(*a, **k):\n    raise RuntimeError('parity harness: --launcher none only')\n"),
    "cv2.py": "",
    "skimage/__init__.py": "",
    "skimage/io.py": "",
}


def scratch_copy(src: Path, work: Path) -> Path:
    dst = work / "noah_code"
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    for rel, text in STUBS.items():
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).write_text(text)
    utils = dst / "model/utils.py"  # torch._six is gone from torch 2
    utils.write_text(utils.read_text().replace("from torch._six import container_abcs",
                                               "import collections.abc as container_abcs"))
    exp = yaml.safe_load((dst / "experiments/Adapter/ViT-B_prompt_adapter_8.yaml").read_text())
    exp["MODEL_NAME"] = "vit_tiny_random"
    exp["SUPERNET"]["DEPTH"] = TINY["depth"]
    (dst / "experiments/Adapter/tiny_adapter_8.yaml").write_text(yaml.safe_dump(exp))
    return dst


def noah_side(work: Path, timm_dir: str) -> None:
    code = work / "noah_code"
    sys.path[:0] = [timm_dir, str(code)]
    torch.set_num_threads(1)
    import timm
    assert timm.__version__ == "0.5.4", timm.__version__
    torch.cuda.synchronize = lambda *a, **k: None  # a GPU: NOAH's train_one_epoch calls it every step
    hand = torch.load(work / "handover.pt", weights_only=False)
    out = {"losses": [], "lrs": [], "initial_equal": None, "timm": timm.__version__}

    import torch.utils.data as tud

    class Replay(tud.Sampler):
        """Our data order, epoch by epoch; hands over our RNG state at the epoch's first index."""
        epoch = 0

        def __init__(self, data_source, *a, **k):
            self.n = len(data_source)

        def __len__(self):
            return self.n

        def __iter__(self):
            e = Replay.epoch
            Replay.epoch += 1
            if hand["rng_handover"]:
                torch.set_rng_state(hand["rngs"][e])
            yield from hand["orders"][e]

    tud.RandomSampler = Replay
    base_ce = torch.nn.CrossEntropyLoss

    class CE(base_ce):
        def forward(self, pred, y):
            loss = super().forward(pred, y)
            if loss.requires_grad:
                out["losses"].append(float(loss.detach()))
            return loss

    torch.nn.CrossEntropyLoss = CE
    import model as noah_models  # the scratch copy
    from model.supernet_vision_transformer_timm import VisionTransformer

    def vit_tiny_random(**kw):
        return VisionTransformer(**TINY, **kw)

    noah_models.vit_tiny_random = vit_tiny_random
    import supernet_engine_prompt as engine
    orig = engine.train_one_epoch

    def train_one_epoch(model, criterion, data_loader, optimizer, *a, **k):
        if out["initial_equal"] is None:
            mine, init = model.state_dict(), hand["initial"]
            out["initial_equal"] = [sorted(set(init) ^ set(mine)),
                                    all(torch.equal(mine[n], init[n]) for n in init if n in mine)]
            out["trainable"] = sorted(n for n, p in model.named_parameters() if p.requires_grad)
        out["lrs"].append([g["lr"] for g in optimizer.param_groups])
        return orig(model, criterion, data_loader, optimizer, *a, **k)

    engine.train_one_epoch = train_one_epoch
    a = hand["args"]
    sys.argv = ["supernet_train_prompt.py", f"--data-path={work / 'vtab-1k' / 'dtd'}", "--data-set=dtd",
                f"--cfg={code / 'experiments/Adapter/tiny_adapter_8.yaml'}", f"--resume={work / 'initial.pth'}",
                f"--output_dir={work / 'noah_out'}", f"--batch-size={a['batch_size']}", "--lr=0.001",
                f"--epochs={a['epochs']}", "--is_adapter", "--weight-decay=0.0001", "--no_aug", "--mixup=0",
                "--cutmix=0", "--direct_resize", "--smoothing=0", "--launcher=none",  # slurm_train_adapter_vtab.sh
                "--device=cpu", "--num_workers=0", "--no-pin-mem", "--input-size=32",  # the tiny model, CPU
                f"--drop-path={a['drop_path']}", f"--drop_rate_adapter={a['dropout']}"]
    import contextlib
    import io
    import runpy
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        runpy.run_path(str(code / "supernet_train_prompt.py"), run_name="__main__")
    (work / "noah_log.txt").write_text(log.getvalue())
    (work / "noah.json").write_text(json.dumps(out))


# ---------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkout", type=Path, help="a checkout of github.com/ZhangYuanhan-AI/NOAH")
    ap.add_argument("--timm", required=True, help="a folder holding timm 0.5.4 (pip install --no-deps --target DIR)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--drop-path", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.1, help="the adapter's dropout")
    ap.add_argument("--no-rng-handover", action="store_true",
                    help="control: leave NOAH's global RNG to its own course (dropout and drop path then differ)")
    ap.add_argument("--noah-side", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.noah_side:
        noah_side(args.noah_side, args.timm)
        return
    torch.set_num_threads(1)
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from helpers_data import make_folder_tree

    with tempfile.TemporaryDirectory(prefix="parity_noah_") as tmp:
        work = Path(tmp)
        data = make_folder_tree(work / "vtab-1k", "dtd", n_per_split=SIZES, num_classes=47, size=32)
        ours = run_ours(data, work, args)
        initial = to_noah(ours["initial"])
        torch.save(initial, work / "initial.pth")
        torch.save(dict(initial=initial, orders=ours["orders"], rngs=ours["rngs"],
                        rng_handover=not args.no_rng_handover,
                        args=dict(batch_size=args.batch_size, epochs=args.epochs, drop_path=args.drop_path,
                                  dropout=args.dropout)), work / "handover.pt")
        scratch_copy(args.checkout, work)
        env = dict(os.environ, PYTHONPATH="")
        cmd = [sys.executable, str(Path(__file__).resolve()), str(args.checkout), "--timm", args.timm,
               "--noah-side", str(work)]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode:
            print(p.stdout[-3000:], p.stderr[-6000:])
            sys.exit("NOAH's side failed")
        noah = json.loads((work / "noah.json").read_text())
        cfg = ours["cfg"]
        print(f"== recipe=noah adapter=bottleneck (width {cfg.adapter.width}, {cfg.adapter.placement}, "
              f"{cfg.adapter.activation}, dropout {cfg.adapter.dropout}) vs NOAH's code (timm {noah['timm']}): "
              f"{args.epochs} epochs, batch {args.batch_size}, {len(ours['orders'][0])} train images, "
              f"drop path {cfg.backbone.drop_path_rate}, RNG state handed over every epoch: {not args.no_rng_handover}")
        diff, same = noah["initial_equal"]
        print(f"initial tensors copied ours -> NOAH (--resume): bit-identical after loading: {same}; "
              f"names only on one side: {diff or 'none'}")
        print(f"NOAH's trainable tensors: {len(noah['trainable'])} "
              f"({', '.join(sorted({n.split('.')[-2] + '.' + n.split('.')[-1] for n in noah['trainable']}))})")
        a, b = noah["losses"], ours["losses"]
        print(f"step  {'NOAH':>12}  {'ours':>12}  |diff|")
        worst = 0.0
        for s in range(max(len(a), len(b))):
            x = a[s] if s < len(a) else float("nan")
            y = b[s] if s < len(b) else float("nan")
            d = abs(x - y)
            worst = max(worst, d) if d == d else float("inf")
            print(f"{s:4d}  {x:12.8f}  {y:12.8f}  {d:.2e}")
        print(f"max |per-step loss difference|: {worst:.3e} over {len(a)} (NOAH) / {len(b)} (ours) steps")
        worst_lr = 0.0
        for e in range(args.epochs):
            x, y = noah["lrs"][e], ours["lrs"][e]
            worst_lr = max([worst_lr] + [abs(u - v) for u in x for v in y])
            print(f"epoch {e + 1}: lr NOAH {' '.join(f'{v:.10g}' for v in sorted(set(x)))} ({len(x)} groups) | "
                  f"ours {' '.join(f'{v:.10g}' for v in sorted(set(y)))} ({len(y)} groups)")
        print(f"max |per-epoch lr difference| (any group against any group): {worst_lr:.3e}")

if __name__ == "__main__":
    main()
