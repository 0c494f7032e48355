"""``pvera-bench``: ``report``, ``data``, ``results``, ``evaluate``, ``export`` are ordinary commands; anything else is a Hydra run.

    pvera-bench adapter=pvera task=cifar100          one run
    pvera-bench -m adapter=pvera,vera task=vtab      a sweep (task=vtab|natural|specialized|structured
                                                     expands to the tasks of the benchmark or group)
    pvera-bench experiment=demo                      the offline demo (every registered adapter)
    pvera-bench report [--results CSV] ...           tables from the CSV
    pvera-bench data prepare|check task=...          VTAB-1k data
    pvera-bench results rebuild|check ...            the CSV from run records; its problems
    pvera-bench evaluate RUN_DIR... [key=value ...]  saved weights scored again (inference modes,
                                                     ood_task=LIST|GROUP, calibration=temperature)
    pvera-bench export RUN_DIR --out DIR             a saved run as a PEFT checkpoint (--format peft)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from . import registry
from .paths import config_dir

# Config groups whose choice a user types on the command line, checked before Hydra starts.
CHOICE_GROUPS = ("adapter", "backbone", "task", "protocol", "trainer", "experiment", "data", "runtime", "recipe", "logger")


def expand_task_words(args: list[str]) -> list[str]:
    """``task=vtab`` (all 19) and ``task=natural|specialized|structured`` become comma lists."""
    from . import tasks

    out = []
    for a in args:
        key, sep, value = a.partition("=")
        if sep and key.lstrip("+~") == "task" and "(" not in value:
            a = f"{key}={','.join(tasks.expand(value))}"
        out.append(a)
    return out


def group_options(group: str, extra: tuple[Path, ...] = ()) -> list[str]:
    """The choices of a config group: pvera-bench's configs, those installed plugins add, and those
    in ``extra`` (config folders the command puts on Hydra's search path)."""
    dirs = (config_dir(), *registry.config_dirs(), *extra)
    return sorted({p.stem for d in dirs for p in (d / group).glob("*.yaml")})


def _search_path(args: list[str]) -> tuple[int | None, list[str]]:
    """The position of a ``hydra.searchpath=[...]`` argument in ``args`` and its entries."""
    for i, a in enumerate(args):
        key, _, value = a.lstrip("+~").partition("=")
        if key == "hydra.searchpath":
            return i, [v.strip().strip("'\"") for v in value.strip().strip("[]").split(",") if v.strip()]
    return None, []


def user_config_dirs(args: list[str]) -> tuple[Path, ...]:
    """The local folders (``file://DIR``) the command puts on Hydra's search path: a task, backbone
    or recipe of one's own (guides/extend.md)."""
    return tuple(Path(v.removeprefix("file://")) for v in _search_path(args)[1] if v.startswith("file://"))


def plugin_search_path(args: list[str]) -> list[str]:
    """``args`` with the plugins' config folders on Hydra's search path (``hydra.searchpath``), after
    any the command names itself."""
    dirs = [f"file://{d}" for d in registry.config_dirs()]
    i, given = _search_path(args)
    if not dirs:
        return args
    value = f"hydra.searchpath=[{','.join(given + [d for d in dirs if d not in given])}]"
    return [*args, value] if i is None else [*args[:i], value, *args[i + 1:]]


def adapter_lines() -> list[str]:
    """One line per adapter, built in or from an installed plugin package, with its help."""
    out = []
    for name in registry.names():
        a = registry.get(name)
        out.append(f"  {name:<14}{a.help}" + (f"  [{a.package}]" if a.package != "pvera-bench" else ""))
    return out


def check_choices(args: list[str]) -> str | None:
    """An error message for an unknown choice (``adapter=foo``), listing the valid names."""
    for a in args:
        key, sep, value = a.partition("=")
        group = key.lstrip("+~").removeprefix("override ").strip("/")
        if not sep or group not in CHOICE_GROUPS or "(" in value or value in ("", "null"):
            continue
        valid = group_options(group, user_config_dirs(args))
        unknown = [v for v in value.split(",") if v not in valid]
        if unknown:
            return f"unknown {group} {', '.join(map(repr, unknown))}; valid {group} names: {', '.join(valid)}"
    return None


def usage() -> str:
    """The module docstring plus every config group's choices (Hydra's own help needs a task)."""
    lines = [__doc__.strip(), "", "Config groups (group=choice; any key: group.key=value):"]
    for group in CHOICE_GROUPS:
        lines.append(f"  {group:<11} {', '.join(group_options(group))}")
    lines += ["", "Adapters (adapter=NAME; plugins add theirs: docs/guides/add-your-method.md):", *adapter_lines()]
    lines += ["", "Print a resolved config: pvera-bench task=demo --cfg job.  Hydra's help: --hydra-help."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "report":
        from .report import main as report_main

        return report_main(args[1:])
    if args and args[0] == "data":
        from .data.cli import main as data_main

        return data_main(args[1:])
    if args and args[0] == "evaluate":
        from .evaluate import main as evaluate_main

        return evaluate_main(args[1:])
    if args and args[0] == "export":
        from .export_cli import main as export_main

        return export_main(args[1:])
    if args and args[0] == "results":
        from .results import main as results_main

        return results_main(args[1:])
    try:
        if "-h" in args or "--help" in args:
            print(usage())
            return 0
        args = plugin_search_path(expand_task_words(args))
        err = check_choices(args)
    except registry.PluginError as e:
        err = str(e)
    if err:
        print(f"pvera-bench: error: {err}", file=sys.stderr)
        return 2
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    from .preflight import PreflightError, check
    from .schema import ConfigError

    try:  # every job of the command, before Hydra creates a directory or a run writes a row
        check(args)
    except (PreflightError, ConfigError) as e:
        print(f"pvera-bench: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    from .hydra_app import hydra_main

    sys.argv = [sys.argv[0] if sys.argv else "pvera-bench"] + args
    hydra_main()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
