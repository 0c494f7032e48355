"""Wall time of `pvera-bench experiment=demo` on two backbones, run back to back (interleaved), so
that their ratio means something on a machine shared with other work.

    python scripts/time_demo.py                                  # random vs pretrained tiny ViT, 1 round
    python scripts/time_demo.py --rounds 2 --backbones vit_tiny_random vit_tiny_pretrained

Each run gets a fresh results CSV and cache in a temporary directory (nothing is skipped as
recorded earlier). Prints one line per run and the ratio of the medians.
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

ROOT = Path(__file__).resolve().parent.parent


def run_demo(backbone: str, extra: list[str]) -> float:
    with tempfile.TemporaryDirectory(prefix="time-demo-") as tmp:
        env = dict(os.environ, HF_HUB_OFFLINE="1", PVERA_BENCH_CACHE=str(Path(tmp) / "cache"),
                   PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "pvera_bench.cli", "experiment=demo", f"backbone={backbone}", *extra],
                           cwd=tmp, env=env, capture_output=True, text=True)
        secs = time.perf_counter() - t
        if p.returncode:
            sys.exit(f"demo on {backbone} failed:\n{p.stderr[-2000:]}")
        return secs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--backbones", nargs=2, default=["vit_tiny_random", "vit_tiny_pretrained"])
    ap.add_argument("extra", nargs="*", help="more overrides for both, e.g. trainer.epochs=5")
    args = ap.parse_args(argv)
    times: dict[str, list[float]] = {b: [] for b in args.backbones}
    for r in range(args.rounds):
        order = args.backbones if r % 2 == 0 else args.backbones[::-1]
        for b in order:
            times[b].append(run_demo(b, args.extra))
            print(f"round {r + 1}: experiment=demo backbone={b}: {times[b][-1]:.1f} s", flush=True)
    a, b = (statistics.median(times[k]) for k in args.backbones)
    print(f"median {args.backbones[0]} {a:.1f} s, {args.backbones[1]} {b:.1f} s, ratio {b / a:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
