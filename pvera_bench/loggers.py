"""Experiment trackers: the ``logger`` config group (``none`` | ``tensorboard`` | ``mlflow`` | ``wandb``).

Every logger receives the same calls from the run:

* ``log_config(cfg_dict)``: the resolved config, once;
* ``log_epoch(tag, entry)``: after each epoch, with the fit's name (``select-0``, ``final``, ...)
  and the epoch's entry (``epoch``, ``lr``, ``train_loss``, ``train_acc`` and, when evaluated,
  ``val_acc``, ``val_loss``, ``test_acc``): the trainer's ``on_epoch`` hook;
* ``log_final(metrics)``: the run's result row; the columns of the metric registry that hold a
  number are logged (``test_acc``, ``test_nll``, ...);
* ``close(status)``: ``ok`` or ``failed``.

Loggers register themselves by name (``@register``); each tracker's package is an optional extra
imported only when that logger is chosen, and a missing one is a :class:`LoggerError` saying which
extra to install.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping

from .metric_registry import METRICS
from .rundir import MLFLOW_DB, TENSORBOARD
from .schema import flatten_dotted

_LOGGERS: dict[str, Callable[..., "Logger"]] = {}


class LoggerError(RuntimeError):
    """A logger that cannot start (its package is missing): one line saying what to install."""


def register(name: str):
    def deco(cls):
        _LOGGERS[name] = cls
        return cls
    return deco


def names() -> list[str]:
    return sorted(_LOGGERS)


def final_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The registry's metrics in a result row that hold a finite number."""
    out = {}
    for m in METRICS.values():
        v = record.get(m.column)
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out[m.column] = f
    return out


def epoch_scalars(entry: Mapping[str, Any]) -> dict[str, float]:
    """The numeric values of an epoch entry, ``epoch`` excluded."""
    out = {}
    for k, v in entry.items():
        if k == "epoch" or isinstance(v, bool):
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out[k] = f
    return out


class Logger:
    """The ``none`` logger, and the interface every logger implements."""

    def log_config(self, cfg: Mapping[str, Any]) -> None:
        pass

    def log_epoch(self, tag: str, entry: Mapping[str, Any]) -> None:
        pass

    def log_final(self, metrics: Mapping[str, Any]) -> None:
        pass

    def close(self, status: str = "ok") -> None:
        pass


register("none")(Logger)


def _need(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise LoggerError(_missing(extra)) from None


def _missing(extra: str) -> str:
    return f"logger={extra} needs the {extra} package: pip install -e \".[{extra}]\" (or choose logger=none)"


@register("tensorboard")
class TensorBoardLogger(Logger):
    package = "tensorboard"  # what check() looks for before a run starts

    def __init__(self, run_dir: Path, default_name: str, dir: str | None = None, **_: Any) -> None:
        _need(self.package, "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(dir) if dir else Path(run_dir) / TENSORBOARD
        self.writer = SummaryWriter(log_dir=str(self.dir))

    def log_config(self, cfg):
        import yaml

        self.writer.add_text("config", "```\n" + yaml.safe_dump(dict(cfg), sort_keys=True) + "```", 0)

    def log_epoch(self, tag, entry):
        for k, v in epoch_scalars(entry).items():
            self.writer.add_scalar(f"{tag}/{k}", v, int(entry["epoch"]))

    def log_final(self, metrics):
        for k, v in final_metrics(metrics).items():
            self.writer.add_scalar(f"final/{k}", v, 0)

    def close(self, status="ok"):
        self.writer.flush()
        self.writer.close()


@register("mlflow")
class MLflowLogger(Logger):
    package = "mlflow"

    def __init__(self, run_dir: Path, default_name: str, tracking_uri: str | None = None,
                 experiment: str = "pvera-bench", run_name: str | None = None, **_: Any) -> None:
        _need(self.package, "mlflow")
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri or f"sqlite:///{Path(run_dir).resolve() / MLFLOW_DB}"
        self.client = MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(exp_id, run_name=run_name or default_name).info.run_id

    def log_config(self, cfg):
        from mlflow.entities import Param

        params = [Param(k, json.dumps(v) if not isinstance(v, str) else v)
                  for k, v in sorted(flatten_dotted(cfg).items())]
        for i in range(0, len(params), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log_epoch(self, tag, entry):
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(f"{tag}/{k}", v, ts, int(entry["epoch"]))
                                                    for k, v in epoch_scalars(entry).items()])

    def log_final(self, metrics):
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, ts, 0) for k, v in final_metrics(metrics).items()])

    def close(self, status="ok"):
        self.client.set_terminated(self.run_id, "FINISHED" if status == "ok" else "FAILED")


@register("wandb")
class WandbLogger(Logger):
    package = "wandb"

    def __init__(self, run_dir: Path, default_name: str, mode: str = "offline", project: str = "pvera-bench",
                 entity: str | None = None, dir: str | None = None, **_: Any) -> None:
        wandb = _need(self.package, "wandb")
        self.dir = Path(dir) if dir else Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(mode=mode, project=project, entity=entity, dir=str(self.dir), name=default_name,
                              reinit="finish_previous")

    def log_config(self, cfg):
        self.run.config.update(dict(cfg), allow_val_change=True)

    def log_epoch(self, tag, entry):
        self.run.log({f"{tag}/{k}": v for k, v in epoch_scalars(entry).items()} | {f"{tag}/epoch": int(entry["epoch"])})

    def log_final(self, metrics):
        self.run.summary.update(final_metrics(metrics))

    def close(self, status="ok"):
        self.run.finish(exit_code=0 if status == "ok" else 1)


def check(cfg: Mapping[str, Any] | None) -> None:
    """That the logger ``cfg`` names can start, without starting it: a known name whose tracker
    package (its class's ``package``) is installed; :class:`LoggerError` otherwise (preflight.py
    calls this before a run directory exists)."""
    import importlib.util

    name = dict(cfg or {}).get("name", "none") or "none"
    if name not in _LOGGERS:
        raise LoggerError(f"unknown logger {name!r}; valid loggers: {', '.join(names())}")
    package = getattr(_LOGGERS[name], "package", None)
    if package and importlib.util.find_spec(package) is None:
        raise LoggerError(_missing(name))


def create(cfg: Mapping[str, Any] | None, run_dir: Path, default_name: str) -> Logger:
    """The logger ``cfg`` (the ``logger`` config group) names; ``none`` when absent."""
    check(cfg)
    cfg = dict(cfg or {})
    name = cfg.pop("name", "none") or "none"
    return _LOGGERS[name](run_dir=Path(run_dir), default_name=default_name, **cfg) if name != "none" else Logger()
