"""Run NOAH's code beside ``recipe=noah adapter=bottleneck`` and compare them step by step.

    git clone https://github.com/ZhangYuanhan-AI/NOAH /tmp/noah              # fetched by you
    pip install --no-deps --target /tmp/timm054 timm==0.5.4                # NOAH's timm (requirements.txt)
    PYTHONPATH=. python scripts/parity_noah.py /tmp/noah --timm /tmp/timm054 --epochs 10
    PYTHONPATH=. python scripts/parity_noah.py /tmp/noah --timm /tmp/timm054 --mutate adapter.activation=gelu
    PYTHONPATH=. python scripts/parity_noah.py /tmp/noah --timm /tmp/timm054 --self-check   # must FAIL on each

Both sides train the same tiny RANDOM ViT (32 px, patch 8, width 64, 4 blocks, 2 heads: our
``backbone=vit_tiny_random``; on NOAH's side its own ``VisionTransformer`` with those sizes, added
to its ``model`` namespace as ``vit_tiny_random``, its head built with 21843 classes as its in21k
ViT-B's) with NOAH's Adapter (width ``--width`` after the MLP branch's drop path, QuickGELU, dropout
0.1), drop path 0.1, on synthetic images written in the vtab-1k folder layout (task ``dtd``, 47
classes; NOAH trains on train800val200 and tests on test). NOAH's side runs its own
``supernet_train_prompt.py`` (its Adapter command line of configs/Adapter/VTAB/slurm_train_adapter_vtab.sh,
smaller; ``--lr``, ``--wd``, ``--warmup-epochs``, ``--width`` and ``--seed`` set on both sides) in a
subprocess with timm 0.5.4 first on ``sys.path``. It ends with PASS (every initial tensor bit-identical, every per-step loss
within ``--tol``) or FAIL (exit 1). ``--mutate KEY=VALUE`` (repeatable) adds any project override to OUR
side only; ``--self-check`` runs the unmutated harness (must pass) and each mutation of ``SELF_CHECK``
(must fail) and prints the table.

The checkout is copied to a scratch directory and only that copy is touched, where the code
reaches a GPU or a package the shared venv lacks: ``torch.cuda.synchronize`` (called every step)
is a no-op, ``--device cpu``; ``model/utils.py`` imports ``container_abcs`` from ``torch._six``
(gone from torch 2) and gets it from ``collections.abc``; tiny stand-ins for ``easydict.EasyDict``,
``mmcv.runner`` (its ``get_dist_info``/``init_dist``; only ``--launcher none`` runs) and the unused
imports ``cv2`` and ``skimage.io``; the experiment yaml names the tiny model, depth 4 and the width.
Nothing of it is committed.

What is aligned, and how (the harness's own choices, printed in its output):

- initial tensors: NOTHING COPIED by default. The backbone is the pretrained input of both: ours is
  written to a file and NOAH loads it through its own ``--resume x.pth`` path (``load_checkpoint(
  strict=False)`` after ``reset_classifier``), as its real runs load ViT-B_16.npz. The Adapter and the
  head are drawn by each side's own code from the same seed (ours: ``init=noah_code``,
  ``head_init=noah_code``) and compared tensor by tensor at the first step.
  ``--copy-initial`` (LABELLED, the old control): copy our adapter and head to NOAH as well.
- the data order: NOAH's ``RandomSampler`` is replaced by one replaying our order of every epoch
  (ours draws it from its own generator, NOAH's from the global RNG): LABELLED, cannot be aligned.
- the global torch RNG (dropout and drop path): its state at the start of each epoch's first
  forward is handed from ours to NOAH's (set when NOAH's sampler yields its first index, after the
  DataLoader's own seed draw): LABELLED, cannot be aligned (``--no-rng-handover``: the control).
  Within the epoch both models consume it in the same order (block by block: drop path of the
  attention branch, drop path of the MLP branch, the adapter's dropout). Between epochs each
  DataLoader iterator of NOAH's (train and test) draws its base seed from the global RNG, while ours
  continues from the end of the epoch's training (its evaluation forks the RNG).
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import yaml

from parity_pvera import EASYDICT, with_mutations  # shared with the PVeRA harness (scripts/ is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"train800": 8, "val200": 8, "test": 8}  # NOAH trains on train800val200: 16 images
TINY = dict(patch_size=8, embed_dim=64, depth=4, num_heads=2, mlp_ratio=4.0, qkv_bias=True)  # backbone=vit_tiny_random
IN21K_CLASSES = 21843  # NOAH's vit_base_patch16_224_in21k builds its head so (its default cfg), then re-draws it
# our override: each must make the harness FAIL
SELF_CHECK = ["backbone.head_init=pytorch",          # head init (NOAH: trunc_normal_ std .02, bias 0)
              "trainer.wd_skip_1d=false",            # weight decay on biases and vectors (timm 0.5.4: none)
              "adapter.activation=gelu",             # GELU instead of NOAH's QuickGELU
              "adapter.placement=mlp",               # the Adapter inside the MLP branch's drop path, not after it
              "adapter.dropout=0.0"]                 # the Adapter's dropout


@dataclass
class Harness:
    epochs: int = 10
    batch_size: int = 8
    drop_path: float = 0.1
    dropout: float = 0.1
    width: int = 32
    lr: float = 3e-2
    wd: float = 0.5
    warmup_epochs: int = 2
    seed: int = 0
    rng_handover: bool = True
    copy_initial: bool = False
    mutate: list = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# our side (in this process)

def run_ours(data_dir: Path, work: Path, h: Harness) -> dict:
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from hydra import compose, initialize_config_dir

    from pvera_bench import run as run_mod
    from pvera_bench import train as train_mod
    from pvera_bench.paths import config_dir

    n_train = SIZES["train800"] + SIZES["val200"]
    overrides = ["adapter=bottleneck", "recipe=noah", "task=dtd", "backbone=vit_tiny_random",
                 f"backbone.drop_path_rate={h.drop_path}", f"adapter.dropout={h.dropout}", f"adapter.width={h.width}",
                 f"data.dir={data_dir}", f"data.cache_dir={work / 'cache'}", f"trainer.epochs={h.epochs}",
                 f"trainer.batch_size={h.batch_size}", f"trainer.lr_head={h.lr}", f"trainer.lr_adapter={h.lr}",
                 f"trainer.wd_head={h.wd}", f"trainer.wd_adapter={h.wd}",
                 f"trainer.warmup_epochs={h.warmup_epochs}", "runtime.progress=false", "runtime.device=cpu",
                 f"seed={h.seed}",
                 f"task.sizes={{train800: {SIZES['train800']}, val200: {SIZES['val200']}, "
                 f"train800val200: {n_train}, test: {SIZES['test']}}}"]
    overrides = with_mutations(overrides, h.mutate)
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


def backbone_only(state: dict) -> dict:
    """The backbone's tensors (NOAH's names): the pretrained input both sides load."""
    return {k: v for k, v in state.items() if ".adapter." not in k and not k.startswith("head.")}


def to_noah(state: dict) -> dict:
    """Our Classifier's state dict under NOAH's names (blocks.i.drop_path2.adapter.{down,up} ->
    blocks.i.adapter.{ln1,ln2}; the backbone and head otherwise under the same timm names)."""
    out = {}
    for k, v in state.items():
        k = k.removeprefix("backbone.").removeprefix("model.")
        k = k.replace("drop_path2.adapter.down", "adapter.ln1").replace("drop_path2.adapter.up", "adapter.ln2")
        k = k.replace("mlp.adapter.down", "adapter.ln1").replace("mlp.adapter.up", "adapter.ln2").replace("mlp.module.", "mlp.")
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


def scratch_copy(src: Path, work: Path, width: int = 8) -> Path:
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
    exp["SUPERNET"]["ADAPTER_DIM"] = width
    exp["RETRAIN"]["ADAPTER_DIM"] = [width] * 12
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
        return VisionTransformer(**TINY, num_classes=IN21K_CLASSES, **kw)

    noah_models.vit_tiny_random = vit_tiny_random
    import supernet_engine_prompt as engine
    orig = engine.train_one_epoch

    def train_one_epoch(model, criterion, data_loader, optimizer, *a, **k):
        if out["initial_equal"] is None:
            mine, init = model.state_dict(), hand["initial"]
            groups: dict = {}
            for n in sorted(set(init) & set(mine)):
                g = "adapter" if ".adapter." in n else "head" if n.startswith("head.") else "backbone"
                groups.setdefault(g, []).append(bool(torch.equal(mine[n], init[n])))
            out["initial_equal"] = [sorted(set(init) ^ set(mine)), {g: [sum(v), len(v)] for g, v in groups.items()}]
            out["trainable"] = sorted(n for n, p in model.named_parameters() if p.requires_grad)
        out["lrs"].append([g["lr"] for g in optimizer.param_groups])
        return orig(model, criterion, data_loader, optimizer, *a, **k)

    engine.train_one_epoch = train_one_epoch
    a = hand["args"]
    sys.argv = ["supernet_train_prompt.py", f"--data-path={work / 'vtab-1k' / 'dtd'}", "--data-set=dtd",
                f"--cfg={code / 'experiments/Adapter/tiny_adapter_8.yaml'}", f"--resume={work / 'weights.pth'}",
                f"--output_dir={work / 'noah_out'}", f"--batch-size={a['batch_size']}", f"--lr={a['lr']}",
                f"--warmup-epochs={a['warmup_epochs']}", f"--seed={a['seed']}",
                f"--epochs={a['epochs']}", "--is_adapter", f"--weight-decay={a['wd']}", "--no_aug", "--mixup=0",
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

def run_pair(checkout: Path, timm_dir: str, h: Harness, tol: float = 1e-5, quiet: bool = False) -> dict:
    """One comparison; returns ``dict(ok, initial, worst, lines)``."""
    from helpers_data import make_folder_tree

    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="parity_noah_") as tmp:
        work = Path(tmp)
        data = make_folder_tree(work / "vtab-1k", "dtd", n_per_split=SIZES, num_classes=47, size=32)
        ours = run_ours(data, work, h)
        initial = to_noah(ours["initial"])
        torch.save(initial if h.copy_initial else backbone_only(initial), work / "weights.pth")
        torch.save(dict(initial=initial, orders=ours["orders"], rngs=ours["rngs"], rng_handover=h.rng_handover,
                        args=asdict(h)), work / "handover.pt")
        scratch_copy(checkout, work, h.width)
        env = dict(os.environ, PYTHONPATH="")
        cmd = [sys.executable, str(Path(__file__).resolve()), str(checkout), "--timm", timm_dir, "--noah-side", str(work)]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode:
            print(p.stdout[-3000:], p.stderr[-6000:])
            sys.exit("NOAH's side failed")
        noah = json.loads((work / "noah.json").read_text())
    cfg = ours["cfg"]
    lines.append(f"== recipe=noah adapter=bottleneck (width {cfg.adapter.width}, {cfg.adapter.placement}, "
                 f"{cfg.adapter.activation}, dropout {cfg.adapter.dropout}, init {cfg.adapter.init}, head "
                 f"{cfg.backbone.head_init}) vs NOAH's code (timm {noah['timm']}): {h.epochs} epochs, batch "
                 f"{h.batch_size}, {len(ours['orders'][0])} train images, lr {h.lr}, wd {h.wd}, "
                 f"warmup {h.warmup_epochs}, seed {h.seed}, drop path {cfg.backbone.drop_path_rate}; our mutations: {h.mutate or 'none'}")
    lines.append(f"initial tensors: {'COPIED ours -> NOAH (--copy-initial)' if h.copy_initial else 'nothing copied (the backbone: the same pretrained file, loaded by each side)'}; "
                 f"RNG state handed over every epoch (dropout, drop path): {h.rng_handover}; data order: ours replayed")
    diff, groups = noah["initial_equal"]
    same = not diff and all(a == b for a, b in groups.values())
    lines.append("initial tensors bit-identical, tensor by tensor: "
                 + ", ".join(f"{g} {a}/{b}" for g, (a, b) in sorted(groups.items()))
                 + f"; names only on one side: {diff or 'none'}")
    lines.append(f"NOAH's trainable tensors: {len(noah['trainable'])} "
                 f"({', '.join(sorted({n.split('.')[-2] + '.' + n.split('.')[-1] for n in noah['trainable']}))})")
    a, b = noah["losses"], ours["losses"]
    lines.append(f"step  {'NOAH':>12}  {'ours':>12}  |diff|")
    worst = 0.0
    for s in range(max(len(a), len(b))):
        x = a[s] if s < len(a) else float("nan")
        y = b[s] if s < len(b) else float("nan")
        d = abs(x - y)
        worst = max(worst, d) if d == d else float("inf")
        lines.append(f"{s:4d}  {x:12.8f}  {y:12.8f}  {d:.2e}")
    lines.append(f"max |per-step loss difference|: {worst:.3e} over {len(a)} (NOAH) / {len(b)} (ours) steps")
    worst_lr = 0.0
    for e in range(h.epochs):
        x, y = noah["lrs"][e], ours["lrs"][e]
        worst_lr = max([worst_lr] + [abs(u - v) for u in x for v in y])
        lines.append(f"epoch {e + 1}: lr NOAH {' '.join(f'{v:.10g}' for v in sorted(set(x)))} ({len(x)} groups) | "
                     f"ours {' '.join(f'{v:.10g}' for v in sorted(set(y)))} ({len(y)} groups)")
    lines.append(f"max |per-epoch lr difference| (any group against any group): {worst_lr:.3e}")
    ok = same and worst <= tol
    lines.append(f"{'PASS' if ok else 'FAIL'}: initial tensors bit-identical: {same}; max per-step loss difference "
                 f"{worst:.3e} {'<=' if worst <= tol else '>'} {tol:g}")
    if not quiet:
        print("\n".join(lines), flush=True)
    return dict(ok=ok, initial=same, worst=worst, lines=lines)


def self_check(checkout: Path, timm_dir: str, base: Harness, tol: float) -> bool:
    print("| our mutation | initial tensors bit-identical | max per-step loss diff | harness says | expected |")
    print("|---|---|---|---|---|", flush=True)
    good = True
    for m in ["(none)"] + SELF_CHECK:
        r = run_pair(checkout, timm_dir, replace(base, mutate=[] if m == "(none)" else [m]), tol, quiet=True)
        want = m == "(none)"
        good &= r["ok"] == want
        print(f"| `{m}` | {r['initial']} | {r['worst']:.3e} | {'PASS' if r['ok'] else 'FAIL'} | "
              f"{'PASS' if want else 'FAIL'}{'' if r['ok'] == want else '  <-- NOT AS EXPECTED'} |", flush=True)
    print(f"self-check: {'OK' if good else 'BROKEN'} ({base.epochs} epochs, width {base.width}, lr {base.lr}, "
          f"wd {base.wd}, "
          f"seed {base.seed}, tol {tol:g})")
    return good


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkout", type=Path, help="a checkout of github.com/ZhangYuanhan-AI/NOAH")
    ap.add_argument("--timm", required=True, help="a folder holding timm 0.5.4 (pip install --no-deps --target DIR)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--drop-path", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.1, help="the adapter's dropout")
    ap.add_argument("--width", type=int, default=32,
                    help="the Adapter's width, both sides (NOAH's ADAPTER_DIM: 8; 32 with lr 3e-2 so that GELU vs "
                         "QuickGELU moves the loss by > 1e-3)")
    ap.add_argument("--lr", type=float, default=3e-2, help="both sides (NOAH's VTAB script: 1e-3; larger, so that "
                                                         "the adapter's maths moves the loss within the run)")
    ap.add_argument("--wd", type=float, default=0.5, help="weight decay, both sides (NOAH's VTAB script: 1e-4; larger, "
                                                        "so that decay on the vectors or not moves the loss)")
    ap.add_argument("--warmup-epochs", type=int, default=2, help="both sides (NOAH's default: 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-5, help="max per-step loss difference that passes")
    ap.add_argument("--copy-initial", action="store_true",
                    help="LABELLED control: copy our initial adapter and head into NOAH's model (default: nothing copied)")
    ap.add_argument("--no-rng-handover", action="store_true",
                    help="control: leave NOAH's global RNG to its own course (dropout and drop path then differ)")
    ap.add_argument("--mutate", action="append", default=[], metavar="KEY=VALUE",
                    help="a project override applied to our side only (repeatable)")
    ap.add_argument("--self-check", action="store_true", help="run SELF_CHECK: unmutated must pass, each mutation fail")
    ap.add_argument("--noah-side", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.noah_side:
        noah_side(args.noah_side, args.timm)
        return
    torch.set_num_threads(1)
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    h = Harness(args.epochs, args.batch_size, args.drop_path, args.dropout, args.width, args.lr, args.wd,
                args.warmup_epochs,
                args.seed, not args.no_rng_handover, args.copy_initial, args.mutate)
    if args.self_check:
        sys.exit(0 if self_check(args.checkout, args.timm, h, args.tol) else 1)
    sys.exit(0 if run_pair(args.checkout, args.timm, h, args.tol)["ok"] else 1)


if __name__ == "__main__":
    main()
