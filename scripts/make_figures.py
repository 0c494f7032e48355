"""Every figure of the documentation, regenerated from runs made here (CPU, offline): the only
writer of ``docs/assets/*.png``.

    python scripts/make_figures.py [--workdir DIR] [--out docs/assets]

Runs (all in ``--workdir``, default ``/tmp/pvera-bench-figures``, with their own results CSV; a
second call skips every run already recorded there, so it only redraws):

1. the demo: ``pvera-bench experiment=demo``, the twelve adapters on digits, seed 0;
2. a small multi-seed, two-backbone run: linear probing, LoRA, VeRA and PVeRA on digits, seeds
   0, 1, 2, on the pretrained and on the random tiny ViT (the pretrained seed-0 runs are the demo's);
3. for the OOD matrix: LoRA and PVeRA (random tiny ViT, 5 epochs) on the demo and on two miniature
   folder-format tasks (``tests/helpers_data``: 40 images per split, one colour per class), then
   ``evaluate`` of the six with ``ood_task=[demo,cifar100,dtd]`` into a CSV of their own.

Then one ``pvera-bench report`` per figure, written to ``--out``. About 10 minutes of CPU on a
2-core machine (most of it the demo).
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = str(Path(sys.executable).with_name("pvera-bench"))
SWEEP_ADAPTERS = "linear_probe,lora,pvera,vera"
OOD_ADAPTERS = "lora,pvera"
OOD_TASKS = {"cifar100": ("cifar", 100), "dtd": ("dtd", 47)}  # task: (vtab-1k folder, classes)


def sh(args: list[str], cwd: Path) -> None:
    print("+", " ".join(shlex.quote(a) for a in args), flush=True)
    t = time.time()
    subprocess.run(args, cwd=cwd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    print(f"  ({time.time() - t:.0f} s)", flush=True)


def runs(work: Path) -> None:
    target = f"results_csv={work / 'results.csv'}"
    sh([BIN, "experiment=demo", target], work)
    sh([BIN, "experiment=demo", f"adapter={SWEEP_ADAPTERS}", "backbone=vit_tiny_pretrained,vit_tiny_random",
        "seed=0,1,2", target], work)
    sys.path.insert(0, str(REPO / "tests"))
    from helpers_data import make_folder_tree

    data = work / "vtab-1k"
    for task, (folder, classes) in OOD_TASKS.items():
        if not (data / folder).is_dir():
            make_folder_tree(data, folder, n_per_split=40, num_classes=min(classes, 10), size=32)
    sh([BIN, "-m", f"adapter={OOD_ADAPTERS}", f"task=demo,{','.join(OOD_TASKS)}", "backbone=vit_tiny_random",
        "data.source=folder", f"data.dir={data}", "protocol=holdout", "trainer.epochs=5", "trainer.warmup_epochs=1",
        "trainer.batch_size=8", "runtime.threads=1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        f"results_csv={work / 'ood-train.csv'}"], work)
    with open(work / "ood-train.csv", newline="", encoding="utf-8") as f:
        dirs = [r["run_dir"] for r in csv.DictReader(f) if r["status"] == "ok"]
    sh([BIN, "evaluate", *dirs, "ood_task=[demo,cifar100,dtd]", "data.source=folder", f"data.dir={data}",
        f"results_csv={work / 'ood.csv'}"], work)


def figures(work: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results = str(work / "results.csv")
    demo = ["--results", results, "--backbone", "vit_tiny_pretrained", "--seed", "0"]
    report = [BIN, "report"]
    sh(report + demo + ["--plot", str(out / "params_demo.png")], work)
    sh(report + demo + ["--plot-curves", str(out / "curves_demo.png")], work)
    sh(report + demo + ["--plot-reliability", str(out / "reliability_demo.png"), "--max-panels", "12"], work)
    sweep = ["--results", results, "--adapter", SWEEP_ADAPTERS]
    sh(report + sweep + ["--backbone", "vit_tiny_pretrained", "--rank-blocks", "task-seed",
                         "--plot-ranks", str(out / "ranks_demo.png")], work)
    sh(report + sweep + ["--plot-heatmap", str(out / "heatmap_demo.png")], work)
    sh(report + ["--results", str(work / "ood.csv"), "--metric", "auroc",
                 "--plot-ood-matrix", str(out / "ood_matrix_demo.png")], work)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/pvera-bench-figures"),
                    help="where the runs, their CSVs and run directories go (reused: recorded runs are skipped)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "assets", help="where the PNGs go")
    ap.add_argument("--no-runs", action="store_true", help="only redraw from the runs already in --workdir")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    work, out = args.workdir.resolve(), args.out.resolve()
    if not args.no_runs:
        runs(work)
    figures(work, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
