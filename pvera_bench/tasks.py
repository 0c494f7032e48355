"""The task table: ``configs/task/<name>.yaml``, one file per task, is the only place tasks are defined.

VTAB-1k tasks carry ``group`` (natural, specialized, structured) and ``order`` (their position in
the benchmark's customary column order); other tasks (``demo``) have no ``order``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Mapping

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


def vtab_tasks(table: Mapping[str, Mapping] | None = None) -> list[str]:
    """The VTAB-1k tasks in benchmark order."""
    table = task_configs() if table is None else table
    return sorted((n for n, t in table.items() if t.get("order") is not None), key=lambda n: table[n]["order"])


def tasks_in_group(group: str, table: Mapping[str, Mapping] | None = None) -> list[str]:
    table = task_configs() if table is None else table
    return [t for t in vtab_tasks(table) if table[t].get("group") == group]


def expand(words: str, table: Mapping[str, Mapping] | None = None) -> list[str]:
    """``vtab`` (all 19), a group name, or a comma list of those and task names -> task names,
    in benchmark order within each word, each once. Unknown names are passed through."""
    out: list[str] = []
    for w in (x.strip() for x in words.split(",")):
        if w == "vtab":
            names = vtab_tasks(table)
        elif w in GROUPS:
            names = tasks_in_group(w, table)
        else:
            names = [w] if w else []
        out += [n for n in names if n not in out]
    return out
