"""``pvera-bench data prepare|check``: get the VTAB-1k data in place and verify it.

    pvera-bench data prepare task=cifar100 [data.dir=PATH] [data.manual_dir=PATH]
    pvera-bench data check [task=vtab|natural|specialized|structured|a,b,c] [data.source=tfds|folder] [data.dir=PATH]

Words are Hydra-style ``key=value`` so they read like the run command. ``main(argv)`` gets the
words after ``data`` and returns the exit code.
"""

from __future__ import annotations

import sys
from typing import Callable, Mapping

import numpy as np

from omegaconf import OmegaConf

from .. import tasks
from ..paths import config_dir
from .core import SPLITS, DataError, DataMissing, expected_size, open_split, resolve_source

USAGE_LINES = """\
pvera-bench data prepare task=TASKS [data.dir=PATH] [data.manual_dir=PATH]
       pvera-bench data check [task=TASKS] [data.source=tfds|folder] [data.dir=PATH]"""
COMMANDS = {
    "prepare": "download and build the TFDS datasets of TASKS as array_record under data.dir (TFDS's default "
               "~/tensorflow_datasets, or $TFDS_DATA_DIR, when not given). Needs TensorFlow once: pip install -e "
               "\".[prepare]\". First, within seconds, it checks every task: resisc45 and diabetic_retinopathy need a "
               "manual download (prepare prints TFDS's instructions), and each builder's download hosts must answer; "
               "when one cannot start, prepare names the files to fetch by hand and where to put them "
               "(data.manual_dir, default <data.dir>/downloads/manual), builds nothing and exits 2. Exit 1: a build "
               "failed.",
    "check": "for each task and split: present? right size, class count and label range? Says what is missing "
             "and how to get it; exit status 1 if anything is missing or wrong.",
}
WORDS = {
    "task": "TASKS: a task name, a comma list, `vtab` (all 19), or a group: natural, specialized, structured "
            "(check defaults to all 19)",
    "data.dir": "where the data is (prepare: where TFDS builds it)",
    "data.source": "check only: tfds (default) or folder, the vtab-1k folder copy "
                   "<data.dir>/<folder>/{train800,val200,train800val200,test}.txt",
    "data.manual_dir": "prepare only: where manually downloaded files are (default <data.dir>/downloads/manual)",
}


def build_parser():
    """The parser behind ``pvera-bench data --help`` (the words themselves are read by :func:`parse_words`)."""
    import argparse

    ap = argparse.ArgumentParser(prog="pvera-bench data", usage=USAGE_LINES,
                                 description="Get the VTAB-1k data in place (prepare) and verify it (check).")
    sub = ap.add_subparsers(dest="cmd", metavar="{prepare,check}")
    for name, text in COMMANDS.items():
        sp = sub.add_parser(name, prog=f"pvera-bench data {name}", help=text.split(". ")[0], description=text)
        sp.add_argument("words", nargs="*", metavar="key=value",
                        help="; ".join(f"{k}: {v}" for k, v in WORDS.items()))
    return ap


KEYS = set(WORDS)


def task_table() -> dict[str, dict]:
    """All task configs by name (``configs/task/*.yaml``)."""
    return tasks.task_configs()


def data_defaults() -> dict:
    d = OmegaConf.load(config_dir() / "data" / "default.yaml")
    return {"source": d.get("source") or "tfds", "dir": d.get("dir")}


def expand_tasks(word: str, table: Mapping[str, Mapping]) -> list[str]:
    """``vtab``, a group name, a comma list or one name -> task names in benchmark order."""
    names = tasks.expand(word, table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise DataError(f"unknown task {unknown[0]!r}; valid: vtab, {', '.join(tasks.GROUPS)}, "
                        f"{', '.join(tasks.vtab_tasks(table))}")
    return names


def parse_words(words: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for w in words:
        k, sep, v = w.partition("=")
        k = k.lstrip("+")
        if not sep or k not in KEYS:
            raise DataError(f"unexpected argument {w!r}; expected key=value with key in {', '.join(sorted(KEYS))}")
        out[k] = None if v in ("", "null", "None") else v
    return out


def main(argv: list[str]) -> int:
    argv = list(argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(parser.format_help(), end="")
        return 0 if argv else 2
    cmd, words = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"pvera-bench data: unknown command {cmd!r}\n\n{parser.format_help()}", end="", file=sys.stderr)
        return 2
    if any(w in ("-h", "--help") for w in words):
        print(parser._subparsers._group_actions[0].choices[cmd].format_help(), end="")
        return 0
    try:
        opts = parse_words(words)
        table = task_table()
        if cmd == "prepare" and not opts.get("task"):
            raise DataError("prepare needs task=TASKS (a name, a comma list, vtab, or a group)")
        names = expand_tasks(opts.get("task") or "vtab", table)
    except DataError as e:
        print(f"pvera-bench data {cmd}: {e}", file=sys.stderr)
        return 2
    defaults = data_defaults()
    data_dir = opts.get("data.dir", defaults["dir"])
    if cmd == "prepare":
        return prepare(names, table, data_dir, opts.get("data.manual_dir"))
    return check(names, table, opts.get("data.source") or defaults["source"], data_dir)


def prepare(names: list[str], table: Mapping[str, Mapping], data_dir: str | None, manual_dir: str | None,
            echo: Callable[[str], None] = print) -> int:
    """Plan every task first (builder, manual downloads, reachable download hosts: seconds), then build.
    Exit 2 without building anything when a task cannot start (a manual download or a file to fetch by
    hand); 1 when a build fails; 0 when all are ready."""
    from . import tfds_source

    missing = tfds_source.missing_prepare_modules()
    if missing:
        echo(f"pvera-bench data prepare builds the TFDS datasets and needs TensorFlow once (missing: "
             f"{', '.join(missing)}): install {tfds_source.PREPARE_EXTRA}")
        return 1
    d = tfds_source.resolve_data_dir(data_dir)
    plans: dict[str, object] = {}  # spec -> Plan; clevr_count and clevr_dist (dsprites_*, smallnorb_*) share one
    owner: dict[str, str] = {}
    blocked, no_builder, failed_specs = [], [], set()
    for n in names:
        task = table[n]
        try:
            spec = tfds_source.tfds_spec(task)
        except DataError as e:  # a task without a TFDS builder (the demo)
            echo(f"[{n}] {e}; nothing to prepare")
            no_builder.append(n)
            continue
        if spec in plans:
            echo(f"[{n}] shares {spec} with {owner[spec]}")
            continue
        note = (task.get("tfds") or {}).get("note")
        if note:
            echo(f"[{n}] note: {' '.join(str(note).split())}")
        p = plans[spec] = tfds_source.plan(task, data_dir, manual_dir)
        owner[spec] = n
        if p.ready:
            echo(f"[{n}] {spec} already prepared at {p.builder.data_path}")
        elif p.problem or p.unreachable:
            blocked.append(p)
    if blocked:
        for p in blocked:
            echo(p.problem or tfds_source.unreachable_message(p))
        todo = [p.task for p in blocked]
        echo(f"pvera-bench data prepare: nothing built; {', '.join(todo)} cannot start (see above). Put the files "
             f"in place (or pass data.manual_dir=PATH) and run again: pvera-bench data prepare "
             f"task={','.join(names)} data.dir={d}")
        return 2
    for spec, p in plans.items():
        if not p.ready and not tfds_source.build(p, echo=echo):
            failed_specs.add(spec)
    bad = [n for n in names if n in no_builder or tfds_source.tfds_spec(table[n]) in failed_specs]
    if bad:
        echo(f"not ready: {', '.join(bad)} (see above); ready: {len(names) - len(bad)} of {len(names)}")
        return 1
    echo(f"all {len(names)} task(s) ready under {d}; verify with: pvera-bench data check task={','.join(names)} "
         f"data.dir={d}")
    return 0


def check_task(task: Mapping, source: str, data_dir: str | None) -> tuple[list[str], list[str], bool]:
    """(problems, facts, missing) for one task: problems make ``check`` fail, facts are printed when ok."""
    problems: list[str] = []
    facts: list[str] = []
    missing = False
    seen_labels: set[int] = set()
    nc = int(task["num_classes"])
    source = resolve_source(task, source)  # the demo reads its own data whatever data.source says

    def problem(msg: str) -> None:
        if msg not in problems:
            problems.append(msg)

    for split in SPLITS:
        try:
            reader = open_split(task, split, source=source, data_dir=data_dir)
        except DataMissing as e:
            missing = True
            if str(e) in problems:
                break  # the same answer for every split: the whole dataset is missing
            problem(str(e))
            continue
        except DataError as e:
            problem(str(e))
            continue
        n, want = len(reader), expected_size(task, split, source)
        facts.append(f"{split} {n}")
        if want is not None and n != want:
            problem(f"{split}: {n} examples, the task table says {want} ({reader.description})")
        try:
            reader.validate()
            labels = reader.labels()
            if len(labels) and (labels.min() < 0 or labels.max() >= nc):
                problem(f"{split}: labels {labels.min()}..{labels.max()} outside 0..{nc - 1}")
            seen_labels.update(np.unique(labels).tolist())
            if n:
                reader.read(0, 1)  # the first image decodes
        except DataError as e:
            problem(f"{split}: {e}")
        counter = getattr(reader, "class_count", None)
        if counter is not None and counter() not in (None, nc):
            problem(f"the data has {counter()} classes, the task table says {nc}")
    if not missing:
        facts.append(f"{nc} classes" + (f" ({len(seen_labels)} seen in the data)" if len(seen_labels) != nc else ""))
    return problems, facts, missing


def check(names: list[str], table: Mapping[str, Mapping], source: str, data_dir: str | None,
          echo: Callable[[str], None] = print) -> int:
    import warnings

    from .tfds_source import quiet_absl

    where = data_dir or ("(TFDS default)" if source == "tfds" else "(data.dir not set)")
    echo(f"data check: source={source} dir={where}, {len(names)} task(s)")
    bad = []
    width = max(len(n) for n in names)
    for n in names:
        task = table[n]
        with warnings.catch_warnings(), quiet_absl():
            warnings.simplefilter("ignore")
            problems, facts, missing = check_task(task, source, data_dir)
        if not problems:
            echo(f"  {n:<{width}}  ok       {', '.join(facts)}")
            continue
        bad.append(n)
        echo(f"  {n:<{width}}  {'MISSING' if missing else 'WRONG':<7}  {problems[0]}")
        for p in problems[1:]:
            echo(f"  {'':<{width}}           {p}")
        if not missing and facts:
            echo(f"  {'':<{width}}           found: {', '.join(facts)}")
    summary = f"{len(names) - len(bad)} of {len(names)} task(s) ready"
    echo(summary + (f"; missing or wrong: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0
