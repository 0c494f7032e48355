"""Bad inputs, tried as a new user (or an adversary) would: what each one leaves behind.

    HF_HUB_OFFLINE=1 python scripts/bad_inputs.py [--out table.md] [--only SUBSTRING] [--keep DIR]

Every case runs ``pvera-bench`` (or a script) in a fresh temporary working directory and is
reported as one row of a markdown table: the input, the exit code, how many lines it wrote to
stderr (tqdm's progress bars not counted), whether a Python traceback was printed, whether it left
an ``outputs/`` or ``multirun/`` directory, and how many rows it appended to a results CSV. The
last stderr line is shown (cut to 110 characters).

Cases that need a saved run share fixtures made once, before the cases (a demo PVeRA run on the
shipped ``vit_tiny_pretrained``, a ``package:`` weights file, and a LoRA run with
``backbone.pos_embed=dinov2_hub``; a CSV with one adapter on two backbones for ``report --ranks``).
Every case is small (``task=demo``, ``backbone=vit_tiny_random``, ``trainer.epochs=1``).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent / "pvera-bench"
DEMO = ["task=demo", "backbone=vit_tiny_random", "trainer.epochs=1", "adapter=lora"]
TQDM = re.compile(r"\d+%\|.*\|\s*\d+/\d+|^\s*$")
TIMEOUT = 600

# (label, argv after pvera-bench, setup) -- {dir} is a directory inside the case's cwd, {run} the saved
# PVeRA run, {hubrun} the dinov2_hub LoRA run, {ranks} a CSV with one adapter on two backbones,
# {export} an export of {run}. argv[0] == "@script" runs python scripts/<argv[1]> instead.
CASES: list[tuple[str, list[str]]] = [
    # -- main CLI: unknown keys, values and paths
    ("foo=bar", [*DEMO, "foo=bar"]),
    ("trainer.foo=1", [*DEMO, "trainer.foo=1"]),
    ("+foo=1", [*DEMO, "+foo=1"]),
    ("adapter=nope", [*DEMO, "adapter=nope"]),
    ("no task", ["adapter=lora", "backbone=vit_tiny_random"]),
    ("'ood_task=['", [*DEMO, "ood_task=["]),
    ("trainer.epochs=0", [*DEMO, "trainer.epochs=0"]),
    ("trainer.lr_head=abc", [*DEMO, "trainer.lr_head=abc"]),
    ("adapter.r=0", [*DEMO, "adapter.r=0"]),
    ("seed=-1", [*DEMO, "seed=-1"]),
    ("runtime.device=gpu", [*DEMO, "runtime.device=gpu"]),
    ("runtime.threads=abc", [*DEMO, "runtime.threads=abc"]),
    ("data.source=bogus", [*DEMO, "data.source=bogus"]),
    ("calibration=bogus", [*DEMO, "calibration=bogus"]),
    ("task.num_classes=0", [*DEMO, "task.num_classes=0"]),
    ("backbone.checkpoint=<a directory>", [*DEMO, "backbone.checkpoint={dir}"]),
    ("backbone.checkpoint=<missing file>", [*DEMO, "backbone.checkpoint=/nonexistent/vit.safetensors"]),
    ("results_csv=<a directory>", [*DEMO, "results_csv={dir}"]),
    ("results_csv=/proc/nope/x.csv", [*DEMO, "results_csv=/proc/nope/x.csv"]),
    ("hydra.run.dir=/etc/passwd/x", [*DEMO, "hydra.run.dir=/etc/passwd/x"]),
    ("-m hydra.sweep.dir=/etc/passwd/x", ["-m", *DEMO, "seed=0,1", "hydra.sweep.dir=/etc/passwd/x"]),
    ("ood_task=nope", [*DEMO, "ood_task=nope"]),
    ("logger=wandb (wandb not installed)", [*DEMO, "logger=wandb"]),
    ("backbone=vit_b16 (hub weights offline)", ["task=demo", "backbone=vit_b16", "trainer.epochs=1", "adapter=lora"]),
    # -- report and commands (as a new user would)
    ("recipe=vpetl task=demo --cfg job --resolve", ["recipe=vpetl", "task=demo", "--cfg", "job", "--resolve"]),
    ("recipe=vpetl task=demo", ["recipe=vpetl", "task=demo", "backbone=vit_tiny_random", "trainer.epochs=1"]),
    ("adapter=pvera task=cifar100 (no weights, no data)", ["adapter=pvera", "task=cifar100"]),
    ("-m task=natural (7 runs, no data)", ["-m", "task=natural", "backbone=vit_tiny_random", "trainer.epochs=1",
                                          "adapter=lora"]),
    ("trainer.epochs=3 (10 warm-up epochs)", ["task=demo", "backbone=vit_tiny_random", "trainer.epochs=3",
                                              "adapter=lora"]),
    ("report --ranks (one adapter, two backbones)", ["report", "--results", "{ranks}", "--ranks"]),
    ("report --plot-ranks (one adapter, two backbones)", ["report", "--results", "{ranks}", "--plot-ranks", "r.png"]),
    ("report --results <missing>", ["report", "--results", "nope.csv"]),
    # -- evaluate: bad override values (issue 24)
    *[(f"evaluate RUN {o}", ["evaluate", "{run}", o]) for o in (
        "runtime.device=gpu", "runtime.threads=abc", "adapter.inference=bogus", "adapter.mc_samples=-3",
        "results_csv={dir}", "ood_task=[", "runtime.eval_batch_size=0", "runtime.nonsense=1", "data.source=bogus",
        "adapter.mc_samples=0", "ood_task=nope")],
    ("evaluate <not a run dir>", ["evaluate", "{dir}"]),
    # -- export
    ("export RUN(pos_embed=dinov2_hub) --format peft", ["export", "{hubrun}", "--out", "exp"]),
    ("export RUN --out <non-empty dir>", ["export", "{run}", "--out", "{dir}/.."]),
    ("check_peft_export.py RUN EXPORT (package: weights)", ["@script", "check_peft_export.py", "{run}", "{export}"]),
]


def sh(argv: list[str], cwd: Path, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def command(args: list[str]) -> list[str]:
    if args and args[0] == "@script":
        return [sys.executable, str(ROOT / "scripts" / args[1]), *args[2:]]
    return [str(BIN), *args]


def make_fixtures(base: Path) -> dict[str, str]:
    """A saved PVeRA run (package: weights), a dinov2_hub LoRA run, an export, a ranks CSV."""
    fx = base / "fixtures"
    fx.mkdir(parents=True)
    for args in (["task=demo", "backbone=vit_tiny_pretrained", "trainer.epochs=1", "adapter=pvera"],
                 ["task=demo", "backbone=vit_tiny_random", "trainer.epochs=1", "adapter=lora",
                  "backbone.pos_embed=dinov2_hub"]):
        p = sh(command(args), fx)
        if p.returncode:
            sys.exit(f"fixture run {' '.join(args)} failed:\n{p.stderr[-2000:]}")
    runs = {r["adapter"]: r for r in csv.DictReader(open(fx / "results" / "results.csv"))}
    exp = fx / "export"
    sh(command(["export", runs["pvera"]["run_dir"], "--out", str(exp)]), fx)
    # one adapter (two, to have something to rank) on two backbones: the pvera row, re-labelled
    rows = []
    for adapter, acc in (("pvera", 0.0), ("lora", 5.0)):
        for bb, shift in (("vit_tiny_pretrained", 0.0), ("vit_tiny_random", -3.0)):
            r = dict(runs["pvera"], adapter=adapter, backbone=bb, test_acc=str(float(runs["pvera"]["test_acc"]) + acc + shift))
            r["setting"] = r["config_hash"] = f"{adapter}-{bb}"
            rows.append(r)
    ranks = fx / "ranks.csv"
    with open(ranks, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return {"run": runs["pvera"]["run_dir"], "hubrun": runs["lora"]["run_dir"], "export": str(exp), "ranks": str(ranks)}


def csv_rows(cwd: Path, args: list[str]) -> int:
    """Rows appended to any results CSV the case could write: results/ under its cwd, or results_csv=."""
    paths = list(cwd.glob("results/*.csv"))
    paths += [Path(a.split("=", 1)[1]) for a in args if a.startswith("results_csv=")]
    n = 0
    for p in paths:
        if p.is_file():
            with open(p, newline="") as f:
                n += max(0, sum(1 for _ in csv.reader(f)) - 1)
    return n


def run_case(label: str, args: list[str], fixtures: dict[str, str], work: Path) -> dict:
    cwd = work / re.sub(r"[^A-Za-z0-9]+", "_", label)[:60]
    cwd.mkdir(parents=True)
    (cwd / "adir").mkdir()
    subs = dict(fixtures, dir=str(cwd / "adir"))
    argv = [a.format(**subs) for a in args]
    t0 = time.time()
    try:
        p = sh(command(argv), cwd)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = "timeout", (e.stdout or b"").decode(errors="replace"), (e.stderr or b"").decode(errors="replace")
    lines = [ln for ln in re.split(r"[\r\n]", err) if not TQDM.search(ln)]
    return dict(label=label, rc=rc, lines=len(lines), traceback="Traceback (most recent" in out + err,
                left=", ".join(d for d in ("outputs", "multirun") if (cwd / d).exists()) or "no",
                rows=csv_rows(cwd, argv), last=(lines[-1] if lines else "").strip(), seconds=time.time() - t0)


def table(results: list[dict]) -> str:
    head = "| # | input | exit | stderr lines | traceback | outputs/ left | CSV rows | s | last stderr line |"
    out = [head, "|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(results, 1):
        last = r["last"].replace("|", "\\|")
        last = last if len(last) <= 110 else last[:107] + "..."
        out.append(f"| {i} | `{r['label']}` | {r['rc']} | {r['lines']} | {'yes' if r['traceback'] else 'no'} | "
                   f"{r['left']} | {r['rows']} | {r['seconds']:.0f} | {last} |")
    n = len(results)
    one = sum(1 for r in results if r["rc"] == 2 and r["lines"] == 1 and not r["traceback"])
    tb = sum(1 for r in results if r["traceback"])
    left = sum(1 for r in results if r["left"] != "no")
    out += ["", f"{n} inputs: {one} refused in one line (exit 2), {tb} tracebacks, {left} left outputs/ or multirun/, "
                f"{sum(1 for r in results if r['rows'])} appended a CSV row."]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the markdown table here too")
    ap.add_argument("--only", help="run only the cases whose label contains this")
    ap.add_argument("--keep", help="work in this directory and keep it (default: a temporary one, removed)")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bad_inputs."))
    work.mkdir(parents=True, exist_ok=True)
    try:
        cases = [c for c in CASES if not args.only or args.only in c[0]]
        need = any("{run}" in a or "{hubrun}" in a or "{ranks}" in a or "{export}" in a for _, argv in cases for a in argv)
        fixtures = make_fixtures(work) if need else {}
        results = []
        for label, argv in cases:
            results.append(run_case(label, argv, fixtures, work / "cases"))
            r = results[-1]
            print(f"{r['rc']!s:>7} {r['lines']:>3} {'TB' if r['traceback'] else '  '} {r['left']:<8} {r['rows']} "
                  f"{label}", file=sys.stderr, flush=True)
        text = table(results)
        print(text)
        if args.out:
            Path(args.out).write_text(text)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
