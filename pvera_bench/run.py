"""One run: compose seed, backbone, adapter, data, protocol and trainer; record one CSV row.

This is the only module that knows Hydra's config and the CSV; everything below it gets plain
values. ``run(cfg)`` is the Hydra task function's body.
"""

from __future__ import annotations

import copy
import datetime as _dt
import functools
import hashlib
import json
import logging
import os
import platform
import random
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import adapters, artifacts, evaluate, loggers, ood, results
from .adapters import AdapterOptionError, UnknownAdapterError
from .backbones import BackboneError, Classifier, create_backbone, input_size
from .data import DataError, load_split
from .data.core import open_split, resolve_source
from .metric_registry import format_value
from .protocols import ProtocolError, run_protocol
from .schema import ConfigError
from .train import DivergedError, HistoryCSV, Trainer, resolve_device

log = logging.getLogger("pvera_bench")

# Errors a user can cause: one clear message, no traceback.
USER_ERRORS = (DataError, BackboneError, DivergedError, UnknownAdapterError, AdapterOptionError, ProtocolError,
               ConfigError, loggers.LoggerError)

# Settings that change a run's numbers: the resume key, with trainer.precision resolved (auto ->
# bf16 on CUDA, fp32 on CPU), the data's fingerprint and the data options that shape the images.
# (runtime.*, data.dir, data.cache_dir, results_csv and force do not; nor does the code identity,
# which every row records in `versions`.)
RESULT_KEYS = ("task", "adapter", "backbone", "trainer", "protocol", "seed", "ood_task", "recipe")
DATA_KEYS_NOT_IN_KEY = ("dir", "cache_dir", "source")  # the source is in the key resolved, per task


def resume_key(cfg: DictConfig) -> dict[str, Any]:
    """Everything that changes a run's numbers, resolved (see RESULT_KEYS)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    key = {k: c.get(k) for k in RESULT_KEYS}
    key["trainer"] = dict(key["trainer"] or {}, precision=resolved_precision(cfg))
    key["data"] = {k: v for k, v in (c.get("data") or {}).items() if k not in DATA_KEYS_NOT_IN_KEY}
    key["data_source"] = data_source(cfg.task, cfg)
    key["data_fingerprint"] = data_fingerprint(cfg)
    return key


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_hash(cfg: DictConfig) -> str:
    """A row's key: its training key and evaluation options (artifacts.split_key)."""
    return artifacts.key_hash(*artifacts.split_key(resume_key(cfg), cfg))


def setting_hash(key: dict[str, Any]) -> str:
    """The hash of a resume key without its seed: rows of one setting differ only in their seed."""
    return _digest({k: v for k, v in key.items() if k != "seed"})


def resolved_precision(cfg: DictConfig) -> str:
    p = str(cfg.trainer.get("precision", "auto"))
    if p != "auto":
        return p
    return "bf16" if resolve_device(cfg.runtime.get("device")).type == "cuda" else "fp32"


def data_source(task, cfg: DictConfig) -> str:
    return resolve_source(task, cfg.data.source)


def data_fingerprint(cfg: DictConfig) -> dict[str, str]:
    """The source fingerprint of every split the protocol reads (and the ood task's test split)."""
    p = cfg.protocol
    splits = sorted({s for s in (p.select_on, p.get("val_split"), p.get("final_on"), p.test_split) if s})
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


def execute(cfg: DictConfig, run_dir: Path, on_epoch=None) -> dict[str, Any]:
    """Train and test one configuration; returns the result columns of its row. ``on_epoch(tag, entry)``
    receives each epoch of every fit (the experiment logger), as history.csv does."""
    rt = cfg.runtime
    threads = cpu_threads(rt.get("threads"))
    if threads:
        torch.set_num_threads(threads)
        log.info("torch CPU threads: %d", threads)
    device = resolve_device(rt.get("device"))
    if cfg.backbone.get("random_weights"):
        log.warning("backbone %s has RANDOM weights: its numbers only show that the tool works", cfg.backbone.name)
    adapters.get(cfg.adapter.name)  # fail on an unknown adapter or ood_task before loading anything
    ood.ood_names(OmegaConf.to_container(cfg, resolve=True).get("ood_task"), cfg.task.name)
    seed_everything(int(cfg.backbone.get("init_seed", cfg.seed)))
    backbone = create_backbone(OmegaConf.to_container(cfg.backbone, resolve=True))
    task = OmegaConf.to_container(cfg.task, resolve=True)
    data_kw = dict(data_dir=cfg.data.get("dir"), img_size=input_size(backbone), cache_dir=cfg.data.get("cache_dir"),
                   resize=cfg.data.get("resize", "bilinear_antialias"))
    loaded: dict[str, Any] = {}
    history = HistoryCSV(run_dir / "history.csv")  # every epoch of every fit, across resumes

    def epoch_done(tag: str, entry: dict[str, Any]) -> None:  # history.csv, then the experiment logger
        history(tag, entry)
        if on_epoch is not None:
            on_epoch(tag, entry)
    ckpt_dir = Path(rt.checkpoint_dir) / config_hash(cfg) if rt.get("checkpoint_dir") else None
    ckpt_every = int(rt.get("checkpoint_every") or 0)

    def load(split: str):
        if split not in loaded:
            loaded[split] = load_split(task, split, source=data_source(task, cfg), **data_kw)
            log.info("%s/%s: %d images", task["name"], split, len(loaded[split]))
        return loaded[split]

    def build(point: dict[str, Any]) -> Trainer:
        c = with_point(cfg, point)
        seed_everything(int(cfg.seed))
        bb = copy.deepcopy(backbone)
        adapters.apply(bb, c.adapter.name, **adapter_options(c.adapter))
        model = Classifier(bb, task["num_classes"])
        settings = dict(OmegaConf.to_container(c.trainer, resolve=True),
                        eval_batch_size=rt.eval_batch_size, progress=rt.progress)
        return Trainer(model, settings, device, seed=int(cfg.seed), compile=bool(rt.get("compile")),
                       checkpoint_dir=ckpt_dir, checkpoint_every=ckpt_every, on_epoch=epoch_done)

    try:
        outcome = run_protocol(OmegaConf.to_container(cfg.protocol, resolve=True), build, load,
                               state_dir=ckpt_dir if ckpt_every else None, on_epoch=epoch_done)
    finally:  # the run's checkpoint directory goes with its last checkpoint
        if ckpt_dir is not None and ckpt_dir.is_dir() and not any(ckpt_dir.iterdir()):
            ckpt_dir.rmdir()
    model = outcome.trainer.model
    preds = outcome.test
    scores, probs = evaluate.score(cfg, outcome.trainer, preds, load,
                                   lambda other: load_split(other, "test", source=data_source(other, cfg), **data_kw))
    np.savez_compressed(run_dir / "predictions.npz", probs=probs.numpy().astype(np.float32),
                        labels=preds.labels.numpy())
    if rt.get("save_weights", True):  # the trained tensors, before the run's record (artifacts.py)
        train_key, evo = artifacts.split_key(resume_key(cfg), cfg)
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
    """Run ``cfg`` unless an ``ok`` row with the same settings exists; append its row."""
    csv_path = Path(cfg.results_csv)
    resolved = resume_key(cfg)
    train_key, eval_options = artifacts.split_key(resolved, cfg)  # what trains; what only evaluation reads
    key = artifacts.key_hash(train_key, eval_options)
    if not cfg.get("force", False):
        prev = results.find_ok(csv_path, key)
        if prev is not None:
            log.info("skipped: %s already has an ok row for these settings (%s, test_acc %s); force=true reruns it",
                     csv_path, prev.get("timestamp"), prev.get("test_acc"))
            results.write_json(run_dir / "record.json", dict(prev, skipped=True))
            return dict(prev)
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
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    logger = loggers.Logger()
    try:
        logger = loggers.create(OmegaConf.to_container(cfg.get("logger") or {}, resolve=True), run_dir,
                                f"{cfg.task.name}_{cfg.adapter.name}_s{cfg.seed}")
        logger.log_config(OmegaConf.to_container(cfg, resolve=True))
        record.update(execute(cfg, run_dir, on_epoch=logger.log_epoch), status="ok")
    except Exception as e:  # record every failure, then decide how loudly to end
        record.update(status="failed", error=one_line(e))
        _finish(logger, None, "failed")
        results.write_json(run_dir / "record.json", record)  # first: kept even if the CSV cannot be written
        results.append(csv_path, record)
        if multirun:  # the sweep goes on
            log.error("run failed (recorded in %s): %s", csv_path, record["error"])
            return record
        if isinstance(e, USER_ERRORS):
            print(f"pvera-bench: error: {record['error']}", file=sys.stderr)
            sys.exit(2)
        raise
    results.write_json(run_dir / "record.json", record)
    results.append(csv_path, record)
    _finish(logger, record, "ok")
    log.info("%s %s %s seed %s: %s, %s adapter params -> %s", record["task"], record["adapter"], record["backbone"],
             record["seed"], ", ".join(f"{k} {format_value(k, v)}" for k, v in loggers.final_metrics(record).items()),
             record["params_adapter"], csv_path)
    return record
