"""One run: compose seed, backbone, adapter, data, protocol and trainer; record one CSV row.

This is the only module that knows Hydra's config and the CSV; everything below it gets plain
values. ``run(cfg)`` is the Hydra task function's body.
"""

from __future__ import annotations

import copy
import datetime as _dt
import functools
import json
import logging
import os
import platform
import random
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import adapters, artifacts, evaluate, loggers, ood, results, schema
from .adapters import AdapterOptionError, UnknownAdapterError
from .backbones import (BackboneError, Classifier, checkpoint_path, create_backbone, input_size, rng_after_heads,
                        sha256_file)
from .data import DataError, load_split
from .data.core import open_split, resolve_source
from .metric_registry import format_value
from .checkpoint import RunState
from .protocols import Candidate, ProtocolError, grid_points, run_protocol
from .schema import ConfigError
from .rundir import DiskFullError, RunDir
from .train import DivergedError, Trainer, resolve_device

log = logging.getLogger("pvera_bench")

# Errors a user can cause: one clear message, no traceback.
USER_ERRORS = (DataError, BackboneError, DivergedError, UnknownAdapterError, AdapterOptionError, ProtocolError,
               ConfigError, loggers.LoggerError, DiskFullError, results.ResultsFileError)

# The resume key is exactly what changes a run's numbers (README, "The results CSV"): the groups
# below as schema.key_view leaves them (labels such as protocol.name and backbone.name, and options
# the chosen mode does not read, left out), trainer.precision resolved (auto -> bf16 on CUDA, fp32 on
# CPU), the backbone's weights by content (backbone_fingerprint, not the checkpoint's path), the
# device's type and runtime.compile, the data options that shape the images, the resolved data
# source and the fingerprint of every split read. Not in it: the recipe's name (its values are in
# the groups it sets), the rest of runtime (threads, batch size of evaluation, progress bars,
# checkpoints), data.dir / data.cache_dir, results_csv, force, logger, and the code identity
# (every row records it in `versions`).
RESULT_KEYS = ("task", "adapter", "backbone", "trainer", "protocol", "seed", "ood_task")
DATA_KEYS_NOT_IN_KEY = ("dir", "cache_dir", "source")  # the source is in the key resolved, per task


def resume_key(cfg: DictConfig) -> dict[str, Any]:
    """Everything that changes a run's numbers, and nothing else (see RESULT_KEYS)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    view = schema.key_view(c)
    key = {k: view.get(k) for k in RESULT_KEYS}
    key["trainer"] = dict(key["trainer"] or {}, precision=resolved_precision(cfg))
    key["backbone"] = dict(key["backbone"] or {}, checkpoint=None, weights=backbone_fingerprint(c.get("backbone") or {}))
    rt = c.get("runtime") or {}
    key["runtime"] = {"device": resolve_device(rt.get("device")).type, "compile": bool(rt.get("compile"))}
    key["data"] = {k: v for k, v in (c.get("data") or {}).items() if k not in DATA_KEYS_NOT_IN_KEY}
    key["data_source"] = data_source(cfg.task, cfg)
    key["data_fingerprint"] = data_fingerprint(cfg, view["protocol"])
    return key


def backbone_fingerprint(bb: dict[str, Any]) -> str | None:
    """The identity of the backbone's weights: ``sha256:<hex>`` of a local ``checkpoint`` file (so
    a replaced file is another key, a moved one is not); for hub weights :func:`hub_revision`;
    None for random weights (``model``, ``kwargs`` and ``init_seed`` say all)."""
    if bb.get("checkpoint"):
        path = checkpoint_path(bb["checkpoint"])  # package:REL is a file shipped in the package
        try:
            st = path.stat()
        except OSError:
            return "missing"  # the run fails on it with the full message
        return "sha256:" + _file_sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)
    if not bb.get("pretrained") or bb.get("random_weights"):
        return None
    return hub_revision(str(bb.get("model")))


@functools.lru_cache(maxsize=8)  # keyed by size and mtime too: a file replaced in-process is read again
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def hub_revision(model_name: str) -> str | None:
    """``hub:<repo>[@<revision>]``: the Hugging Face Hub weights timm loads for ``model_name`` (its
    ``hf_hub_id``, which carries the revision when timm pins one; the tag is in the model name);
    None for a model without hub weights. (Not the commit of a cached snapshot: it is unknown
    before the first download, and a run that downloads must not get another key than its rerun.)"""
    from timm.models import get_pretrained_cfg

    try:
        pcfg = get_pretrained_cfg(model_name)
    except Exception:  # noqa: BLE001 - an unknown model: the run fails on it with the full message
        return None
    repo = getattr(pcfg, "hf_hub_id", None) if pcfg is not None else None
    return f"hub:{repo}" if repo else None


def config_hash(cfg: DictConfig) -> str:
    """A row's key: its training key and evaluation options (artifacts.split_key)."""
    return artifacts.key_hash(*artifacts.split_key(resume_key(cfg), cfg))


def setting_hash(cfg: DictConfig) -> str:
    """A row's ``setting``: its key without the seed (rows of one setting differ only in their seed)."""
    return artifacts.setting_of(*artifacts.split_key(resume_key(cfg), cfg))


def resolved_precision(cfg: DictConfig) -> str:
    p = str(cfg.trainer.get("precision", "auto"))
    if p != "auto":
        return p
    return "bf16" if resolve_device(cfg.runtime.get("device")).type == "cuda" else "fp32"


def data_source(task, cfg: DictConfig) -> str:
    return resolve_source(task, cfg.data.source)


def data_fingerprint(cfg: DictConfig, protocol: dict[str, Any] | None = None) -> dict[str, str]:
    """The source fingerprint of every split the protocol reads (and the ood task's test split);
    ``protocol`` as schema.key_view leaves it (without the selection splits of a protocol that
    selects nothing), else ``cfg.protocol``."""
    p = protocol if protocol is not None else OmegaConf.to_container(cfg.protocol, resolve=True)
    splits = sorted({s for s in (p.get("select_on"), p.get("val_split"), p.get("final_on"), p.get("test_split")) if s})
    task = OmegaConf.to_container(cfg.task, resolve=True)
    out = {f"{task['name']}/{s}": _split_fingerprint(task, s, data_source(task, cfg), cfg.data.get("dir")) for s in splits}
    try:
        others = ood.ood_configs(OmegaConf.to_container(cfg, resolve=True).get("ood_task"), task["name"])
    except DataError:  # an unknown name: the run fails on it with the full message
        others = []
    for other in others:
        out[f"{other['name']}/test"] = _split_fingerprint(other, "test", data_source(other, cfg), cfg.data.get("dir"))
    return out


def _split_fingerprint(task: dict, split: str, source: str, data_dir: str | None) -> str:
    return _cached_fingerprint(json.dumps(task, sort_keys=True), split, source, data_dir)


@functools.lru_cache(maxsize=64)  # one stat pass per split and process (a key is needed several times)
def _cached_fingerprint(task_json: str, split: str, source: str, data_dir: str | None) -> str:
    try:
        return open_split(json.loads(task_json), split, source=source, data_dir=data_dir).fingerprint
    except DataError as e:  # missing data: the run fails on it with the full message
        return f"unavailable: {type(e).__name__}"


@functools.lru_cache(maxsize=1)
def versions_info() -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version()}
    for pkg in ("pvera-bench", "torch", "timm", "tensorflow-datasets"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    out.update(git_identity(Path(__file__).resolve().parent.parent))
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    return out


def versions() -> str:
    """The code identity recorded in every row: package versions, and the commit of the git
    checkout the package runs from (``pvera-bench-commit``, ``pvera-bench-dirty``)."""
    return json.dumps(versions_info(), sort_keys=True)


def git_identity(src: Path) -> dict[str, Any]:
    """``{pvera-bench-commit, pvera-bench-dirty}`` when ``src`` is the top of a git checkout
    (an editable install); {} when it is not, or git is absent or fails."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    if not (src / ".git").exists():
        return {}
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"pvera-bench-commit": commit, "pvera-bench-dirty": dirty}


def adapter_options(adapter_cfg: DictConfig) -> dict[str, Any]:
    opts = OmegaConf.to_container(adapter_cfg, resolve=True)
    opts.pop("name", None)
    return opts


def with_point(cfg: DictConfig, point: dict[str, Any]) -> DictConfig:
    """A copy of ``cfg`` with a grid point's values (dotted keys) applied."""
    c = copy.deepcopy(cfg)
    for key, value in point.items():
        OmegaConf.update(c, key, value, force_add=False)
    return c


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if isinstance(e, USER_ERRORS) else f"{type(e).__name__}: {text}"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_state(cfg: DictConfig, key: str) -> RunState:
    """The run's on-disk state: ``<runtime.checkpoint_dir>/<key>/`` (in memory only when
    ``runtime.checkpoint_dir`` is null), with a fit checkpoint every ``runtime.checkpoint_every`` epochs."""
    rt = cfg.runtime
    return RunState(Path(rt.checkpoint_dir) / key if rt.get("checkpoint_dir") else None,
                    every=int(rt.get("checkpoint_every") or 0))


def split_loaders(cfg: DictConfig, img_size: int) -> tuple[Callable[[str], Any], Callable[[dict], Any]]:
    """``(load(split), load_task_test(task_config))``: the run's task's splits, each opened once, the
    splits a model trains on (``select_on``, ``final_on``) resized by ``data.train_resize`` (V-PETL-Bench:
    bicubic for augmented training images, bilinear for evaluation), and another task's test split
    (OOD), each from its own data source."""
    task = OmegaConf.to_container(cfg.task, resolve=True)
    data_kw = dict(data_dir=cfg.data.get("dir"), img_size=img_size, cache_dir=cfg.data.get("cache_dir"),
                   resize=cfg.data.get("resize", "bilinear_antialias"))
    train_kw = dict(data_kw, resize=cfg.data.get("train_resize") or data_kw["resize"])
    train_splits = {cfg.protocol.get("select_on"), cfg.protocol.get("final_on")} - {None}
    loaded: dict[str, Any] = {}

    def load(split: str):
        if split not in loaded:
            kw = train_kw if split in train_splits else data_kw
            loaded[split] = load_split(task, split, source=data_source(task, cfg), **kw)
            log.info("%s/%s: %d images", task["name"], split, len(loaded[split]))
        return loaded[split]

    def load_task_test(other: dict):
        return load_split(other, "test", source=data_source(other, cfg), **data_kw)

    return load, load_task_test


def execute(cfg: DictConfig, run_dir: Path, state: RunState | None = None, on_epoch=None,
            keys: tuple[dict, dict] | None = None) -> dict[str, Any]:
    """Train and test one configuration; returns the result columns of its row. ``state`` keeps
    what is finished (``RunState``); ``on_epoch(tag, entry)`` receives each epoch of every fit
    (the experiment logger), as history.csv does."""
    rt = cfg.runtime
    set_threads(rt)
    device = resolve_device(rt.get("device"))
    if cfg.backbone.get("random_weights"):
        log.warning("backbone %s has RANDOM weights: its numbers only show that the tool works", cfg.backbone.name)
    adapters.get(cfg.adapter.name)  # fail on an unknown adapter or ood_task before loading anything
    ood.ood_names(OmegaConf.to_container(cfg, resolve=True).get("ood_task"), cfg.task.name)
    seed_everything(int(cfg.backbone.get("init_seed", cfg.seed)))
    backbone = create_backbone(OmegaConf.to_container(cfg.backbone, resolve=True))
    rng_after_backbone = torch.get_rng_state()  # where the PVeRA code draws its heads (backbone.head_draws)
    task = OmegaConf.to_container(cfg.task, resolve=True)
    load, load_task_test = split_loaders(cfg, input_size(backbone))
    history = RunDir(run_dir).history_writer()  # every epoch of every fit, across resumes

    def epoch_done(tag: str, entry: dict[str, Any]) -> None:  # history.csv, then the experiment logger
        history(tag, entry)
        if on_epoch is not None:
            on_epoch(tag, entry)

    points = grid_points(OmegaConf.to_container(cfg.protocol, resolve=True).get("grid")) or [{}]
    every = tuple(adapter_options(with_point(cfg, q).adapter) for q in points)  # for draws made per candidate
    code_heads = cfg.backbone.get("head_draws", "run") == "after_backbone"  # the PVeRA code's order: backbone, heads,
    after_heads = rng_after_heads(rng_after_backbone, backbone.num_features, task["num_classes"], len(points)) \
        if code_heads else None  # then the adapter's global-RNG draws (DoRA's A)

    def build(candidate: Candidate) -> Trainer:
        c, index = with_point(cfg, candidate.point), candidate.index
        seed_everything(int(cfg.seed))
        bb = copy.deepcopy(backbone)
        with adapters.building(adapters.GridDraw(index, every, int(cfg.seed), after_heads)):
            adapters.apply(bb, c.adapter.name, **adapter_options(c.adapter))
        head_draw = 0
        if code_heads:  # the PVeRA code's j-th head
            torch.set_rng_state(rng_after_backbone)
            head_draw = index
        model = Classifier(bb, task["num_classes"], head_init=cfg.backbone.get("head_init", "pytorch"),
                           head_draw=head_draw)
        settings = dict(OmegaConf.to_container(c.trainer, resolve=True),
                        eval_batch_size=rt.eval_batch_size, progress=rt.progress)
        return Trainer(model, settings, device, seed=int(cfg.seed), compile=bool(rt.get("compile")),
                       on_epoch=epoch_done)

    outcome = run_protocol(OmegaConf.to_container(cfg.protocol, resolve=True), build, load, state=state,
                           on_epoch=epoch_done)
    model = outcome.trainer.model
    preds = outcome.test
    scores, probs = evaluate.score(cfg, outcome.trainer, preds, load, load_task_test)
    RunDir(run_dir).write_predictions(probs.numpy(), preds.labels.numpy())
    if rt.get("save_weights", True):  # the trained tensors, before the run's record (artifacts.py)
        train_key, evo = keys if keys is not None else artifacts.split_key(resume_key(cfg), cfg)
        artifacts.save(run_dir, model, with_point(cfg, outcome.chosen), chosen=outcome.chosen, train_key=train_key,
                       config_hash=artifacts.key_hash(train_key, evo), versions=versions())
    head = sum(p.numel() for p in model.head.parameters())
    row = dict(
        **scores,
        params_adapter=adapters.count_trainable(model.backbone),
        params_head=head,
        params_trainable=adapters.count_trainable(model),
        frozen_buffers=adapters.count_frozen_buffers(model),
        adapter_options=json.dumps(adapter_options(with_point(cfg, outcome.chosen).adapter), sort_keys=True),
        **outcome.record(),
    )
    return row


def set_threads(rt: DictConfig) -> None:
    """torch's CPU threads for this process (:func:`cpu_threads`)."""
    threads = cpu_threads(rt.get("threads"))
    if threads:
        torch.set_num_threads(threads)
        log.info("torch CPU threads: %d", threads)


def cpu_threads(given: Any) -> int | None:
    """torch's CPU threads: ``runtime.threads`` when given, else the CPUs SLURM gave the task
    (SLURM_CPUS_PER_TASK), else torch's own choice when OMP_NUM_THREADS is set (None), else the
    CPUs this process may run on (its affinity mask, not every core of the node)."""
    if given:
        return int(given)
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def _finish(logger: loggers.Logger, record: dict[str, Any] | None, status: str) -> None:
    """Final metrics and close; the row is recorded already, so a tracker's failure is only logged."""
    try:
        if record is not None:
            logger.log_final(record)
        logger.close(status)
    except Exception as e:  # noqa: BLE001
        log.warning("the experiment logger failed at the end of the run (the result is recorded): %s", one_line(e))


def run(cfg: DictConfig, run_dir: Path, overrides: list[str], multirun: bool) -> dict[str, Any]:
    """Run ``cfg`` unless an ``ok`` row with the same settings exists; append its row.

    The run's state (``RunState``: checkpoints, finished candidates, the final model, and the
    record itself before its row is appended) is removed only once the row is in the CSV: a run
    killed at any point, started again, trains nothing that had finished, and one killed after
    its record was saved only appends that record's row."""
    csv_path = Path(cfg.results_csv)
    refused = _or_exit(results.check_writable, csv_path)  # not this tool's CSV: refused before training
    if refused is not None:
        return refused
    resolved = resume_key(cfg)
    train_key, eval_options = artifacts.split_key(resolved, cfg)  # what trains; what only evaluation reads
    key = artifacts.key_hash(train_key, eval_options)
    state = run_state(cfg, key)
    if not cfg.get("force", False):
        prev = results.find_ok(csv_path, key)
        if prev is not None:
            log.info("skipped: %s already has an ok row for these settings (%s, test_acc %s); force=true reruns it",
                     csv_path, prev.get("timestamp"), prev.get("test_acc"))
            results.write_json(run_dir / "record.json", dict(prev, skipped=True))
            state.clear()  # killed after its row was appended: what it left is not needed
            return dict(prev)
    pending = state.record()
    if pending is not None:  # finished in an earlier run, killed before its row was appended
        return _append_pending(pending, csv_path, run_dir, state)
    if not cfg.get("force", False):
        saved = evaluate.find_saved(csv_path, artifacts.digest(train_key))
        if saved is not None:  # these weights are trained already: a new evaluation of them, no training
            log.info("the weights of this setting are saved in %s: evaluating them instead of training", saved)
            try:
                return evaluate.evaluate_run(saved, evaluate.sweep_overrides(cfg), out_dir=run_dir,
                                             record_extra=dict(overrides=" ".join(overrides)))
            except (artifacts.ArtifactError, evaluate.EvaluateError, *USER_ERRORS) as e:  # never a silent retrain
                if multirun:
                    log.error("could not evaluate the saved weights in %s (no row recorded): %s", saved, one_line(e))
                    return dict(status="failed", error=one_line(e))
                print(f"pvera-bench: error: {one_line(e)}", file=sys.stderr)
                sys.exit(2)
    record: dict[str, Any] = dict(
        timestamp=_dt.datetime.now().isoformat(timespec="seconds"),
        task=cfg.task.name, adapter=cfg.adapter.name, backbone=cfg.backbone.name, protocol=cfg.protocol.name,
        seed=int(cfg.seed), adapter_options=json.dumps(adapter_options(cfg.adapter), sort_keys=True),
        recipe=(cfg.get("recipe") or {}).get("name"),
        trainer=json.dumps(resolved["trainer"], sort_keys=True),
        data_source=data_source(cfg.task, cfg), setting=artifacts.setting_of(train_key, eval_options), config_hash=key,
        train_key=artifacts.digest(train_key), eval_options=json.dumps(eval_options, sort_keys=True, default=str),
        overrides=" ".join(overrides),
        run_dir=str(run_dir), versions=versions(),
    )
    RunDir(run_dir).write_config(OmegaConf.to_yaml(cfg, resolve=True))
    logger = loggers.Logger()
    try:
        logger = loggers.create(OmegaConf.to_container(cfg.get("logger") or {}, resolve=True), run_dir,
                                f"{cfg.task.name}_{cfg.adapter.name}_s{cfg.seed}")
        logger.log_config(OmegaConf.to_container(cfg, resolve=True))
        record.update(execute(cfg, run_dir, state, on_epoch=logger.log_epoch, keys=(train_key, eval_options)),
                      status="ok")
    except Exception as e:  # record every failure, then decide how loudly to end
        if isinstance(e, DiskFullError):  # no failed row: the numbers may be complete (the state keeps them)
            _finish(logger, None, "failed")
            return _or_exit(_raise, e, multirun=multirun)
        record.update(status="failed", error=one_line(e))
        _finish(logger, None, "failed")
        results.write_json(run_dir / "record.json", record)  # first: kept even if the CSV cannot be written
        results.append(csv_path, results.make_row(**record))  # the state stays: a rerun resumes what had finished
        if multirun:  # the sweep goes on
            log.error("run failed (recorded in %s): %s", csv_path, record["error"])
            return record
        if isinstance(e, USER_ERRORS):
            print(f"pvera-bench: error: {record['error']}", file=sys.stderr)
            sys.exit(2)
        raise
    unsaved = _or_exit(_commit, state, record, run_dir, csv_path, multirun=multirun)
    if unsaved is not None:  # the state keeps what was saved: a rerun appends the row
        return unsaved
    state.clear()
    _finish(logger, record, "ok")
    log.info("%s %s %s seed %s: %s, %s adapter params -> %s", record["task"], record["adapter"], record["backbone"],
             record["seed"], ", ".join(f"{k} {format_value(k, v)}" for k, v in loggers.final_metrics(record).items()),
             record["params_adapter"], csv_path)
    return record


def _commit(state: RunState, record: dict[str, Any], run_dir: Path, csv_path: Path) -> None:
    state.commit_record(record)  # from here a kill only leaves the row to append
    results.write_json(run_dir / "record.json", record)
    results.append(csv_path, results.make_row(**record))


def _raise(e: Exception) -> None:
    raise e


def _or_exit(fn: Callable[..., Any], *args: Any, multirun: bool = False) -> Any:
    """``fn(*args)``; a full disk or a results file that is not this tool's ends the run with one
    line (exit 2; in a sweep, an error logged and no row) instead of a ``failed`` row."""
    try:
        return fn(*args)
    except (DiskFullError, results.ResultsFileError) as e:
        if multirun:
            log.error("%s (no row recorded)", one_line(e))
            return dict(status="failed", error=one_line(e))
        print(f"pvera-bench: error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)


def _append_pending(record: dict[str, Any], csv_path: Path, run_dir: Path, state: RunState) -> dict[str, Any]:
    """Append the row of a run that finished in an earlier process (its record saved in the run
    state, its row missing), unless the CSV has it already; this run's directory gets a copy
    marked ``skipped`` (so ``results rebuild`` adds the run once, from its own directory)."""
    log.info("finished in an earlier run (%s, test_acc %s), killed before its row was appended: appending it",
             record.get("timestamp"), record.get("test_acc"))
    own = Path(record["run_dir"]) / "record.json"
    if own.parent.is_dir() and not own.is_file():
        results.write_json(own, record)
    rows = results.read(csv_path) if csv_path.is_file() else []
    if not any(r.get("timestamp") == record["timestamp"] and r.get("run_dir") == record["run_dir"] for r in rows):
        results.append(csv_path, record)
    results.write_json(run_dir / "record.json", dict(record, skipped=True))
    state.clear()
    return record
