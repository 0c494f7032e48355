"""The task table: ``configs/task/<name>.yaml``, one file per task, is the only place tasks are defined.

VTAB-1k tasks carry ``group`` (natural, specialized, structured) and ``order`` (their position in
the benchmark's customary column order); other tasks (``demo``) have no ``order``.
"""

from __future__ import annotations

from functools import lru_cache

from omegaconf import OmegaConf

from .paths import config_dir

GROUPS = ("natural", "specialized", "structured")


@lru_cache(maxsize=None)
def task_configs() -> dict[str, dict]:
    out = {}
    for p in sorted((config_dir() / "task").glob("*.yaml")):
        out[p.stem] = OmegaConf.to_container(OmegaConf.load(p), resolve=False)
    return out


def available() -> list[str]:
    return sorted(task_configs())


def vtab_tasks() -> list[str]:
    """The VTAB-1k tasks in benchmark order."""
    table = task_configs()
    return sorted((n for n, t in table.items() if t.get("order") is not None), key=lambda n: table[n]["order"])


def group_of(task: str) -> str | None:
    return task_configs().get(task, {}).get("group")


def tasks_in_group(group: str) -> list[str]:
    return [t for t in vtab_tasks() if group_of(t) == group]
