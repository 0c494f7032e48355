"""The training command checked whole before Hydra creates a directory or a run writes a row.

``check(args)`` takes the command line of ``pvera-bench`` (after ``check_choices``) and composes
every job of it the way Hydra will (one job, or each job of a ``-m`` sweep, the sweeper's
``hydra.sweeper.params`` included), then, job by job and cheapest first:

1. Hydra's own composition: an unknown key (``foo=bar``), a bad override (``'ood_task=['``), a
   missing task; a recipe without values for the task (``--cfg job`` included);
2. every option (:func:`schema.validate`), and ``task.num_classes``;
3. what the job writes: ``results_csv`` (a file, in a directory that can be created and written)
   and the run or sweep directory Hydra will create;
4. what the job needs on this machine: the experiment logger's package, the ``ood_task`` names,
   the backbone's weights (a checkpoint file, or hub weights cached or reachable), and the data
   of every split the protocol reads (and of every OOD task's test split).

The first problem ends the command with one line (:class:`PreflightError`; in a sweep the line
names the job and says that none of its runs started), before ``outputs/`` or a CSV row exists.
One warning line (never a refusal: quick tests run 1 epoch) says when a run ends inside its
warm-up, so its learning rate never reaches ``trainer.lr_*``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from .paths import config_dir
from .plan import config_plan
from .schema import ConfigError, check_per_task, validate


class PreflightError(ValueError):
    """A command that cannot work: one line, exit code 2."""


# -- the jobs of a command line ---------------------------------------------------------------------

PASS_THROUGH = ("help", "hydra_help", "info", "shell_completion", "config_path", "config_name", "config_dir",
                "experimental_rerun")


def check(args: list[str]) -> None:
    """Raise :class:`PreflightError` (or :class:`~pvera_bench.schema.ConfigError`) with one line for
    the first job of ``args`` that cannot work; print one warning line per distinct warning."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import setup_globals
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        ns, unknown = get_args_parser().parse_known_args(args)
    except SystemExit:  # argparse's own usage error: Hydra prints it
        return
    if unknown or any(getattr(ns, k, None) for k in PASS_THROUGH):
        return  # Hydra's own modes (--info, --hydra-help, ...) and its own usage errors
    setup_globals()  # the ${now:...} and ${hydra:...} resolvers of the run directory's name
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="pvera_bench"):
            loader = GlobalHydra.instance().config_loader()
            compose_job = lambda overrides: compose(config_name="config", overrides=overrides,  # noqa: E731
                                                    return_hydra_config=True)
            if ns.cfg:  # --cfg job|hydra|all prints the config: it must compose and resolve
                job = job_part(compose_job(ns.overrides))
                check_per_task(job)
                _resolved(job)
                return
            multirun, jobs = expand(ns.overrides, ns.multirun, loader, compose_job)
            check_jobs(jobs, multirun, compose_job)
    except (HydraException, OmegaConfBaseException) as e:
        raise PreflightError(hydra_line(e)) from None


def expand(overrides: list[str], multirun: bool, loader: Any, compose_job: Callable) -> tuple[bool, list[list[str]]]:
    """``(multirun, jobs)``: each job's overrides as Hydra's basic sweeper makes them (its
    ``hydra.sweeper.params`` first, then the command line's, a sweep ``a,b`` expanded)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create(config_loader=loader)
    parsed = parser.parse_overrides(overrides)
    first = [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override()
             else o.input_line for o in parsed]
    base = compose_job(first)
    multirun = multirun or str(base.hydra.get("mode")) in ("MULTIRUN", "RunMode.MULTIRUN")
    if not multirun:
        return False, [overrides]
    sweeper = base.hydra.get("sweeper") or {}
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return True, [first]  # another sweeper chooses its jobs itself: check the first one
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    return True, BasicSweeper.split_arguments(parser.parse_overrides(params + overrides), None)[0]


def check_jobs(jobs: list[list[str]], multirun: bool, compose_job: Callable) -> None:
    warned: set[str] = set()
    memo: dict[str, str | None] = {}
    for i, job in enumerate(jobs):
        cfg = compose_job(job)
        try:
            warning = check_job(cfg, multirun, memo)
        except (ConfigError, PreflightError) as e:
            if not multirun:
                raise
            varied = [o for o in job if sum(o in j for j in jobs) < len(jobs)]
            raise PreflightError(f"{e} [sweep run {i + 1} of {len(jobs)}: {' '.join(varied) or ' '.join(job)}; "
                                 f"the sweep stopped before its first run: {len(jobs)} runs spared]") from None
        if warning and warning not in warned:
            warned.add(warning)
            print(f"pvera-bench: warning: {warning}", file=sys.stderr)


# -- one job --------------------------------------------------------------------------------------

def check_job(cfg: Any, multirun: bool, memo: dict[str, str | None]) -> str | None:
    """Check one composed job (with its ``hydra`` node); returns a warning line or None."""
    job = job_part(cfg)
    out_dir = str(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir)
    validate(job)
    c = _resolved(job)
    num_classes = (c.get("task") or {}).get("num_classes")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise PreflightError(f"task.num_classes={num_classes!r} is invalid: allowed an integer >= 2 (the task's "
                             f"number of classes; configs/task/{c['task'].get('name')}.yaml)")
    writable_file(Path(str(c["results_csv"])), "results_csv")
    writable_dir(Path(out_dir), "hydra.sweep.dir" if multirun else "hydra.run.dir")
    if (c.get("runtime") or {}).get("checkpoint_dir"):
        writable_dir(Path(str(c["runtime"]["checkpoint_dir"])), "runtime.checkpoint_dir")
    for what, fn, arg in needs(c):
        key = f"{what}:{json.dumps(arg, sort_keys=True, default=str)}"
        if key not in memo:
            try:
                fn(arg)
                memo[key] = None
            except Exception as e:  # noqa: BLE001 - each check raises its module's one-line user error
                memo[key] = " ".join(str(e).split())
        if memo[key]:
            raise PreflightError(memo[key])
    return warmup_warning(c["trainer"])


def job_part(cfg: Any) -> Any:
    """The job's config without its ``hydra`` node (what the task function receives), with the
    ``hydra`` node set where ``${hydra:...}`` resolves."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict, read_write

    HydraConfig.instance().set_config(cfg)
    job = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with read_write(job), open_dict(job):
        del job["hydra"]
    return job


def needs(c: Mapping[str, Any]) -> list[tuple[str, Callable[[Any], None], Any]]:
    """What the job needs on this machine, cheapest first: ``(name, check(arg), arg)``."""
    task = c["task"]
    checks: list[tuple[str, Callable[[Any], None], Any]] = [("logger", _check_logger, c.get("logger"))]
    others: list[Mapping] = []
    if c.get("ood_task") not in (None, "", []):
        checks.append(("ood_task", _check_ood, (c["ood_task"], task["name"])))
        others = _ood_configs(c["ood_task"], task["name"])
    checks.append(("weights", _check_weights, c["backbone"]))
    source, data_dir = c["data"]["source"], c["data"].get("dir")
    for split in config_plan(c).splits_read:  # the splits the protocol reads (the key fingerprints them)
        checks.append(("data", _check_split, (task, split, source, data_dir)))
    for other in others:
        checks.append(("data", _check_split, (other, "test", source, data_dir)))
    return checks


def warmup_warning(t: Mapping[str, Any]) -> str | None:
    """A run whose epochs end inside its warm-up never reaches its learning rate (issue 24: 3 epochs
    of a 10-epoch warm-up score below chance). A warning, not a refusal: tests and smoke runs
    train one epoch on purpose."""
    warmup, epochs = float(t.get("warmup_epochs") or 0), int(t["epochs"])
    if warmup <= 0 or epochs > warmup:
        return None
    return (f"trainer.epochs={epochs} ends inside the warm-up (trainer.warmup_epochs={warmup:g}): the learning rate "
            f"never reaches trainer.lr_head/lr_adapter; for a real run, set trainer.warmup_epochs below "
            f"trainer.epochs")


def _check_logger(cfg: Any) -> None:
    from . import loggers

    loggers.check(cfg)


def _check_ood(arg: tuple[Any, str]) -> None:
    from . import ood  # imports torch (metrics): only when ood_task is set

    ood.ood_names(*arg)


def _ood_configs(value: Any, own: str) -> list[Mapping]:
    from . import ood
    from .data import DataError

    try:
        return ood.ood_configs(value, own)
    except DataError:
        return []  # _check_ood reports it


def _check_split(arg: tuple[Mapping, str, str, str | None]) -> None:
    from .data.core import open_split

    task, split, source, data_dir = arg
    open_split(task, split, source=source, data_dir=data_dir)


def _check_weights(bb: Mapping[str, Any]) -> None:
    if not bb.get("checkpoint") and (not bb.get("pretrained") or bb.get("random_weights")):
        return  # random weights: nothing to find (and no torch to import)
    from .backbones import check_weights  # imports torch and timm

    check_weights(bb)


# -- paths ----------------------------------------------------------------------------------------

def writable_file(path: Path, key: str) -> None:
    """``path`` can be created or appended to: not a directory, in a directory that can be made."""
    if path.is_dir():
        raise PreflightError(f"{key}={path} is a directory; give the path of a CSV file (e.g. {path}/results.csv)")
    if path.exists() and not os.access(path, os.W_OK):
        raise PreflightError(f"{key}={path} cannot be written (permission denied); give a file you can write")
    writable_dir(path.parent, key, shown=path)


def writable_dir(path: Path, key: str, shown: Path | None = None) -> None:
    """``path`` exists as a writable directory or can be made: its nearest existing ancestor is a
    directory in which a directory can be created (tried, then removed; nothing is left)."""
    shown = shown or path
    anc = Path(os.path.abspath(path))
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise PreflightError(f"{key}={shown} cannot be created: {anc} is a file, not a directory; give another path")
    if anc == Path(os.path.abspath(path)) and os.access(anc, os.W_OK | os.X_OK):
        return
    try:
        tempfile.TemporaryDirectory(dir=anc, prefix=".pvera-bench-check.").cleanup()
    except OSError as e:
        raise PreflightError(f"{key}={shown} cannot be created in {anc} ({e.strerror or e}); give a path in a "
                             f"directory you can write") from None


# -- messages -------------------------------------------------------------------------------------

def _resolved(cfg: Any) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def hydra_line(e: BaseException) -> str:
    """One line for Hydra's (and OmegaConf's) several-line messages."""
    text = str(e)
    cause = str(e.__cause__ or "")
    if getattr(e, "override", None):  # OverrideParseException
        return (f"cannot parse the override {e.override!r}: {text.splitlines()[0].strip()}; quote a value holding brackets "
                f"or commas (key='[a,b]'), see https://hydra.cc/docs/advanced/override_grammar/basic/")
    m = re.search(r"Could not override '([^']+)'", text)
    if m and "not in struct" in cause:
        key = m.group(1)
        plus = re.search(r"use (\+\S+)", text)
        return (f"{key}: no such option in this config; check its spelling (pvera-bench task=demo --cfg job prints "
                f"every option), or add a key of your own with {plus.group(1) if plus else '+' + key + '=VALUE'}")
    lines = []
    for part in (text, cause):
        for ln in part.splitlines():
            ln = ln.strip()
            if ln and not ln.startswith(("full_key:", "object_type", "reference_type", "See https", "Set the env")):
                lines.append(ln)
    return re.sub(r"Available options: ", "available options: ", " ".join(dict.fromkeys(lines)))
