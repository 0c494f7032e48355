"""Hydra callbacks: after a sweep, a compact table of what each of its runs recorded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def summary_table(records: list[dict[str, Any]]) -> str:
    cols = ("adapter", "task", "backbone", "seed", "status", "test_acc", "params_adapter", "params_trainable", "run")
    rows = []
    for r in records:
        acc = r.get("test_acc")
        acc = f"{float(acc):.2f}" if acc not in (None, "") else "-"
        run = "recorded earlier" if r.get("skipped") else "new"
        rows.append([str(r.get(c, "")) if c != "test_acc" else acc for c in cols[:-1]] + [run])
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    errors = [f"  {r.get('adapter')}/{r.get('task')}: {r.get('error')}" for r in records if r.get("status") == "failed"]
    if errors:
        lines += ["failed runs:", *errors]
    return "\n".join(lines)


class SweepSummary(Callback):
    """Prints one line per job of the sweep (new rows and rows skipped as already recorded)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        def job_num(p: Path) -> int:
            head = p.parent.name.split("_", 1)[0]
            return int(head) if head.isdigit() else 1 << 30

        files = sorted(self.sweep_dir.glob("*/record.json"), key=job_num)
        records = [json.loads(p.read_text()) for p in files]
        if not records:
            return
        print(f"\nSweep summary: {len(records)} runs, recorded in {config.results_csv}")
        print(summary_table(records))
        for name in sorted({str(r.get("backbone", "")) for r in records}):
            if random_weights(name):
                print(f"(backbone {name} has RANDOM weights: these numbers only show that the tool works)")
            elif note := backbone_setting(name, "note"):
                print(f"(backbone {name}: {note})")


def backbone_setting(backbone: str, key: str):
    """``key`` of the backbone config ``backbone`` (None when absent)."""
    from omegaconf import OmegaConf

    from .paths import config_dir

    path = config_dir() / "backbone" / f"{backbone}.yaml"
    return OmegaConf.load(path).get(key) if path.is_file() else None


def random_weights(backbone: str) -> bool:
    """Whether the backbone config ``backbone`` says its weights are random."""
    return bool(backbone_setting(backbone, "random_weights"))
