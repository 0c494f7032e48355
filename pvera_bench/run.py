"""Training one run: build every candidate, run the protocol, score the test split, save the
weights, record the row.

:func:`train` is the training half of a Hydra job (:mod:`.job` decides whether a job trains,
re-evaluates saved weights or is skipped); :func:`execute` trains and tests one configuration and
returns its result columns. Models are built by :class:`.assemble.ModelBuilder` (the one builder
that evaluation and export use too), the protocol's meaning is :mod:`.plan`'s, the row's key is
:mod:`.identity`'s. Evaluation of saved weights is the sibling :mod:`.evaluate`; neither imports
the other.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from . import adapters, artifacts, loggers, ood, results
from .assemble import USER_ERRORS, ModelBuilder, adapter_options, one_line, or_exit, score, set_threads, split_loaders
from .backbones import input_size
from .checkpoint import RunState
from .identity import data_source, digest, key_hash, run_keys, setting_of, versions
from .metric_registry import format_value
from .plan import with_point
from .protocols import Candidate, run_protocol
from .rundir import DiskFullError, RunDir
from .train import Trainer, resolve_device

log = logging.getLogger("pvera_bench")


def run_state(cfg: DictConfig, key: str) -> RunState:
    """The run's on-disk state: ``<runtime.checkpoint_dir>/<key>/`` (in memory only when
    ``runtime.checkpoint_dir`` is null), with a fit checkpoint every ``runtime.checkpoint_every`` epochs."""
    rt = cfg.runtime
    return RunState(Path(rt.checkpoint_dir) / key if rt.get("checkpoint_dir") else None,
                    every=int(rt.get("checkpoint_every") or 0))


def execute(cfg: DictConfig, run_dir: Path, state: RunState | None = None, on_epoch=None,
            keys: tuple[dict, dict] | None = None) -> dict[str, Any]:
    """Train and test one configuration; returns the result columns of its row. ``state`` keeps
    what is finished (``RunState``); ``on_epoch(tag, entry)`` receives each epoch of every fit
    (the experiment logger), as history.csv does; ``keys``: the run's (training key, evaluation
    options), computed here when not given."""
    rt = cfg.runtime
    set_threads(rt)
    device = resolve_device(rt.get("device"))
    if cfg.backbone.get("random_weights"):
        log.warning("backbone %s has RANDOM weights: its numbers only show that the tool works", cfg.backbone.name)
    adapters.get(cfg.adapter.name)  # fail on an unknown adapter or ood_task before loading anything
    ood.ood_names(OmegaConf.to_container(cfg, resolve=True).get("ood_task"), cfg.task.name)
    models = ModelBuilder(cfg)
    load, load_task_test = split_loaders(cfg, input_size(models.backbone))
    history = RunDir(run_dir).history_writer()  # every epoch of every fit, across resumes

    def epoch_done(tag: str, entry: dict[str, Any]) -> None:  # history.csv, then the experiment logger
        history(tag, entry)
        if on_epoch is not None:
            on_epoch(tag, entry)

    def build(candidate: Candidate) -> Trainer:
        model = models(candidate.index)
        settings = dict(OmegaConf.to_container(with_point(cfg, candidate.point).trainer, resolve=True),
                        eval_batch_size=rt.eval_batch_size, progress=rt.progress)
        return Trainer(model, settings, device, seed=int(cfg.seed), compile=bool(rt.get("compile")),
                       on_epoch=epoch_done)

    outcome = run_protocol(OmegaConf.to_container(cfg.protocol, resolve=True), build, load, state=state,
                           on_epoch=epoch_done)
    model, preds, chosen = outcome.trainer.model, outcome.test, with_point(cfg, outcome.chosen)
    scores, probs = score(cfg, outcome.trainer, preds, load, load_task_test)
    RunDir(run_dir).write_predictions(probs.numpy(), preds.labels.numpy())
    if rt.get("save_weights", True):  # the trained tensors, before the run's record (artifacts.py)
        train_key, evo = keys if keys is not None else run_keys(cfg)
        artifacts.save(run_dir, model, chosen, candidate=outcome.candidate.index, chosen=outcome.chosen,
                       train_key=train_key, config_hash=key_hash(train_key, evo), versions=versions())
    return dict(
        **scores,
        params_adapter=adapters.count_trainable(model.backbone),
        params_head=sum(p.numel() for p in model.head.parameters()),
        params_trainable=adapters.count_trainable(model),
        frozen_buffers=adapters.count_frozen_buffers(model),
        adapter_options=json.dumps(adapter_options(chosen.adapter), sort_keys=True),
        **outcome.record(),
    )


def _finish(logger: loggers.Logger, record: dict[str, Any] | None, status: str) -> None:
    """Final metrics and close; the row is recorded already, so a tracker's failure is only logged."""
    try:
        if record is not None:
            logger.log_final(record)
        logger.close(status)
    except Exception as e:  # noqa: BLE001
        log.warning("the experiment logger failed at the end of the run (the result is recorded): %s", one_line(e))


def train(cfg: DictConfig, run_dir: Path, overrides: list[str], multirun: bool, keys: tuple[dict, dict],
          state: RunState) -> dict[str, Any]:
    """Train ``cfg`` (its ``keys``: training key, evaluation options) and append its row; a failure
    is recorded as a ``failed`` row (the state stays, so a rerun resumes what had finished) and
    ends the process with one line (exit 2) unless this is a sweep. The state is removed only once
    the row is in the CSV."""
    csv_path = Path(cfg.results_csv)
    train_key, eval_options = keys
    record: dict[str, Any] = dict(
        timestamp=_dt.datetime.now().isoformat(timespec="seconds"),
        task=cfg.task.name, adapter=cfg.adapter.name, backbone=cfg.backbone.name, protocol=cfg.protocol.name,
        seed=int(cfg.seed), adapter_options=json.dumps(adapter_options(cfg.adapter), sort_keys=True),
        recipe=(cfg.get("recipe") or {}).get("name"),
        trainer=json.dumps(train_key["trainer"], sort_keys=True),
        data_source=data_source(cfg.task, cfg), setting=setting_of(train_key, eval_options),
        config_hash=key_hash(train_key, eval_options),
        train_key=digest(train_key), eval_options=json.dumps(eval_options, sort_keys=True, default=str),
        overrides=" ".join(overrides),
        run_dir=str(run_dir), versions=versions(),
    )
    RunDir(run_dir).write_config(OmegaConf.to_yaml(cfg, resolve=True))
    logger = loggers.Logger()
    try:
        logger = loggers.create(OmegaConf.to_container(cfg.get("logger") or {}, resolve=True), run_dir,
                                f"{cfg.task.name}_{cfg.adapter.name}_s{cfg.seed}")
        logger.log_config(OmegaConf.to_container(cfg, resolve=True))
        record.update(execute(cfg, run_dir, state, on_epoch=logger.log_epoch, keys=keys), status="ok")
    except Exception as e:  # record every failure, then decide how loudly to end
        if isinstance(e, DiskFullError):  # no failed row: the numbers may be complete (the state keeps them)
            _finish(logger, None, "failed")
            return or_exit(_raise, e, multirun=multirun)
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
    unsaved = or_exit(_commit, state, record, run_dir, csv_path, multirun=multirun)
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
