"""How long the CLI takes to refuse a bad input, and to skip a recorded sweep (the wall-time checks
that used to live in tests; a test asserts that the refusal is one line, this script says how fast).

    python scripts/bench_refusals.py              # each case 3 times, medians
    python scripts/bench_refusals.py --repeat 5

Each case runs ``python -m pvera_bench.cli ...`` in a fresh temporary directory with HF_HUB_OFFLINE=1
and prints its exit code, its stderr line count and the median wall time. The machine's load goes
straight into these numbers: quote them with the machine and what else was running.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FAST = ["backbone=vit_tiny_random", "task=demo", "trainer.epochs=1", "runtime.progress=false"]
CASES = {
    "bad device (schema)": ["adapter=lora", *FAST, "runtime.device=gpu"],
    "bad adapter option": ["adapter=lora", *FAST, "adapter.r=0"],
    "unknown adapter": ["adapter=nope", *FAST],
    "hub weights offline": ["adapter=lora", "backbone=vit_b16", "task=demo"],
}


def once(args: list[str], cwd: Path) -> tuple[int, int, float]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PVERA_BENCH_CACHE=str(cwd / "cache"), OMP_NUM_THREADS="1")
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "pvera_bench.cli", *args], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=600)
    return p.returncode, len([ln for ln in p.stderr.splitlines() if ln.strip()]), time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"{'case':24} exit  lines  median s  (of {args.repeat})")
    for name, case in CASES.items():
        runs = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="bench-refusal-") as tmp:
                runs.append(once(case, Path(tmp)))
        rc, lines = runs[-1][:2]
        print(f"{name:24} {rc:4}  {lines:5}  {statistics.median(r[2] for r in runs):8.2f}")


if __name__ == "__main__":
    main()
