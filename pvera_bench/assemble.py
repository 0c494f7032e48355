"""The shared assembly layer: what training (:mod:`.run`) and evaluation (:mod:`.evaluate`,
:mod:`.export`, :func:`.artifacts.load_run`) both build from a config, built one way.

- :class:`ModelBuilder`: config + grid candidate -> the untrained model exactly as training
  built it (the backbone with its position embeddings, seeded by ``backbone.init_seed``; the
  adapter under the run's seed with the per-candidate draw context ``adapters.GridDraw``; the
  head by ``backbone.head_init``, drawn where ``backbone.head_draws`` says);
- :func:`split_loaders`: the run's splits, each opened once, the training splits resized as training
  resizes them; :func:`set_threads`: torch's CPU threads;
- :func:`score`: the metric, OOD and calibration columns of a model's test predictions;
- :data:`USER_ERRORS` / :func:`one_line`: errors a user can cause, said in one line.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import sys
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import adapters, calibration, loggers, metrics, ood, results
from .adapters import AdapterOptionError, UnknownAdapterError
from .backbones import BackboneError, Classifier, create_backbone, rng_after_heads
from .data import DataError, load_split
from .identity import data_source, plain_config
from .plan import ProtocolError, config_plan, grid_points, with_point
from .rundir import DiskFullError
from .schema import ConfigError
from .train import DivergedError

log = logging.getLogger("pvera_bench")

# Errors a user can cause: one clear message, no traceback.
USER_ERRORS = (DataError, BackboneError, DivergedError, UnknownAdapterError, AdapterOptionError, ProtocolError,
               ConfigError, loggers.LoggerError, DiskFullError, results.ResultsFileError)


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if isinstance(e, USER_ERRORS) else f"{type(e).__name__}: {text}"


def or_exit(fn: Callable[..., Any], *args: Any, multirun: bool = False) -> Any:
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def adapter_options(adapter_cfg: Any) -> dict[str, Any]:
    """An adapter group's options (its ``name`` left out), as ``adapters.apply`` takes them."""
    opts = plain_config(adapter_cfg)
    opts.pop("name", None)
    return opts


class ModelBuilder:
    """The untrained models of a config's grid candidates, exactly as training builds them.

    Created once per run: seeds torch with ``backbone.init_seed`` (default: the seed), creates the
    backbone and remembers the RNG state after it (where the PVeRA code draws its heads). Calling
    it with a candidate's index (its place in the grid, ``plan.grid_points``; 0 without a grid)
    seeds with ``seed``, applies the adapter to a copy of the backbone with that point's options
    inside ``adapters.building(GridDraw(index, every candidate's options, seed))`` and adds the
    head (``head_init``; with ``head_draws: after_backbone`` the ``index``-th head drawn after the
    backbone). ``cfg`` may have a point applied already (a saved run's config): the grid it
    carries gives the same points."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.seed = int(cfg.seed)
        seed_everything(int(cfg.backbone.get("init_seed", cfg.seed)))
        self.backbone = create_backbone(OmegaConf.to_container(cfg.backbone, resolve=True))
        self.rng_after_backbone = torch.get_rng_state()
        self.points = grid_points(OmegaConf.to_container(cfg.protocol, resolve=True).get("grid")) or [{}]
        self.draws = tuple(adapter_options(with_point(cfg, q).adapter) for q in self.points)
        # the PVeRA code's order (head_draws: after_backbone): the backbone, every candidate's head, then
        # the adapters' draws from the global RNG (DoRA's A), which start where the heads leave it
        self.code_heads = cfg.backbone.get("head_draws", "run") == "after_backbone"
        self.after_heads = rng_after_heads(self.rng_after_backbone, self.backbone.num_features,
                                           int(cfg.task.num_classes), len(self.points)) if self.code_heads else None

    def __call__(self, index: int) -> Classifier:
        c = with_point(self.cfg, self.points[index])
        seed_everything(self.seed)
        bb = copy.deepcopy(self.backbone)
        with adapters.building(adapters.GridDraw(index, self.draws, self.seed, self.after_heads)):
            adapters.apply(bb, c.adapter.name, **adapter_options(c.adapter))
        head_draw = 0
        if self.code_heads:  # the PVeRA code's j-th head
            torch.set_rng_state(self.rng_after_backbone)
            head_draw = index
        return Classifier(bb, int(self.cfg.task.num_classes), head_init=self.cfg.backbone.get("head_init", "pytorch"),
                          head_draw=head_draw)


def build_model(config: Any, candidate: int = 0) -> Classifier:
    """The untrained model of grid candidate ``candidate`` of ``config`` (a DictConfig or a plain
    mapping), as training builds it."""
    cfg = config if isinstance(config, DictConfig) else OmegaConf.create(dict(config))
    return ModelBuilder(cfg)(candidate)


# ---------------------------------------------------------------- data and threads
def split_loaders(cfg: DictConfig, img_size: int) -> tuple[Callable[[str], Any], Callable[[dict], Any]]:
    """``(load(split), load_task_test(task_config))``: the run's task's splits, each opened once, the
    splits a model trains on (``Plan.fit_splits``) resized by ``data.train_resize`` (V-PETL-Bench:
    bicubic for augmented training images, bilinear for evaluation), and another task's test split
    (OOD), each from its own data source."""
    task = OmegaConf.to_container(cfg.task, resolve=True)
    data_kw = dict(data_dir=cfg.data.get("dir"), img_size=img_size, cache_dir=cfg.data.get("cache_dir"),
                   resize=cfg.data.get("resize", "bilinear_antialias"))
    train_kw = dict(data_kw, resize=cfg.data.get("train_resize") or data_kw["resize"])
    train_splits = set(config_plan(OmegaConf.to_container(cfg, resolve=True)).fit_splits)
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


# ---------------------------------------------------------------- scoring
def score(cfg: DictConfig, trainer, test, load: Callable[[str], Any],
          load_task_test: Callable[[dict], Any]) -> tuple[dict, Any]:
    """The metric, OOD and calibration columns of a model's test predictions ``test``, and the
    probabilities those metrics are of. ``load(split)`` opens a split of the run's task,
    ``load_task_test(task_config)`` another task's test split."""
    sampled = test.sample_preds is not None
    row: dict[str, Any] = dict(metrics.summarize(test.probs, test.labels, test.sample_preds))
    row.update(ood.score_ood(cfg.get("ood_task"), cfg.task.name,
                             lambda t: trainer.predict(load_task_test(t), stream=f"ood/{t['name']}").probs,
                             test.probs, sampled))
    probs = test.probs
    if str(cfg.get("calibration") or "none") == "temperature":
        plan = config_plan(OmegaConf.to_container(cfg, resolve=True))
        split = plan.val_split
        val = trainer.predict(load(split), stream=f"calibration/{split}")
        t = calibration.fit_temperature(val.probs, val.labels)
        probs = calibration.scaled(test.probs, t).float()
        after = metrics.summarize(probs, test.labels, test.sample_preds)
        for k in ("test_nll", "test_ece", "test_brier"):
            row[f"{k}_uncal"] = row[k]
            row[k] = after[k]
        if sampled:
            row["mc_entropy"] = after["mc_entropy"]
        row.update(calibration="temperature", temperature=t, calibration_split=split)
        if plan.trained_on(split):
            log.warning("temperature fitted on %s, which the kept model trained on (%s): it is optimistic",
                        split, plan.final_on or plan.select_on)
        elif plan.chooses:
            log.warning("temperature fitted on %s, which also chose the model (checkpoint best or a grid): the "
                        "model scores better there than on test, so the fitted T is too small", split)
    return row, probs
