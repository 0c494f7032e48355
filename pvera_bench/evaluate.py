"""``pvera-bench evaluate RUN_DIR... [--runs DIR] [key=value ...]``: score saved weights again, no training.

Each run directory's ``adapter.safetensors`` (see :mod:`pvera_bench.artifacts`) is loaded into the
model it was trained as, the evaluation options given as overrides are applied
(``adapter.inference=mc adapter.mc_samples=32``, ``ood_task=[...]`` or a group, ``calibration=temperature``,
``runtime.*``, ``data.dir``), the test split is scored and one row is appended whose key is the run's
training key plus these evaluation options, with ``evaluated_from`` naming the run and
``train_seconds`` 0. Its ``record.json`` and ``predictions.npz`` go to
``RUN_DIR/evaluations/<time>_<key>/``; the row goes to ``results_csv=...`` when given, else to
``results/results.csv`` relative to the working directory (never to a path a run directory
names). Re-evaluating with the run's own settings gives its numbers exactly. A key that already has an ``ok`` row is skipped unless ``force=true``; to compare a
re-evaluation with the original row, write it to another CSV (``results_csv=other.csv``).

Overrides that would change the trained model (``adapter.r``, ``backbone=...``, ``trainer.*``) are
refused: train that setting instead. A missing, corrupt or foreign weight file is one line, exit 2,
and no row. A sweep (``pvera-bench -m ...``) whose training key matches a saved run evaluates that
run's weights instead of training again (:func:`find_saved`).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from omegaconf import OmegaConf

from . import artifacts, calibration, results
from .artifacts import ArtifactError
from .assemble import USER_ERRORS, adapter_options, score, set_threads, split_loaders
from .backbones import input_size
from .identity import (EVALUATION_OPTIONS, INFERENCE, accepts_override, data_source, key_hash, run_keys, setting_of,
                       versions)
from .paths import config_dir
from .plan import TEST_STREAM
from .rundir import RunDir
from .schema import validate
from .train import Trainer, resolve_device

log = logging.getLogger("pvera_bench")

# Identity columns an evaluation row copies from the training row it came from.
FROM_TRAINING = ("task", "adapter", "backbone", "protocol", "seed", "recipe", "trainer", "data_source", "chosen",
                 "epochs", "best_epoch", "grid_scores", "params_adapter", "params_head", "params_trainable",
                 "frozen_buffers")
# ...and those that depend on the inference options too (kept only when those are the training's).
VALIDATION = ("val_acc", "val_loss", "test_acc_max")


class EvaluateError(ValueError):
    """A request evaluate cannot honour (an option that would change the trained model)."""


# ---------------------------------------------------------------- the CSV side
def find_saved(csv_path: str | Path, train_hash: str) -> Path | None:
    """The run directory of the latest ``ok`` training row with this training key whose weights
    are on disk, if any."""
    if not Path(csv_path).is_file():
        return None
    for r in reversed(results.read(csv_path)):
        if r.get("status") == "ok" and r.get("train_key") == train_hash and not r.get("evaluated_from"):
            d = Path(r.get("run_dir") or "")
            if (d / artifacts.FILENAME).is_file():
                return d
    return None


def results_csv(overrides: Mapping[str, Any]) -> Path:
    """Where an evaluation's row goes: the ``results_csv`` the user gave, else the default of
    ``configs/config.yaml`` relative to the working directory; never a path read from a run
    directory (its weight file or config could name any file)."""
    given = overrides.get("results_csv")
    return Path(str(given) if given else OmegaConf.load(config_dir() / "config.yaml")["results_csv"])


def check_overrides(overrides: Mapping[str, Any], options: Mapping[str, Any]) -> None:
    """Only evaluation options (``identity.EVALUATION_OPTIONS``) and only the run's adapter's own."""
    for key in overrides:
        if not accepts_override(key):
            raise EvaluateError(f"{key} would change the trained model; evaluate takes only evaluation options "
                                f"({', '.join(EVALUATION_OPTIONS)}): train that setting instead")
        if key.startswith("adapter.") and key.split(".", 1)[1] not in options:
            raise EvaluateError(f"{key}: this run's adapter has no option {key.split('.', 1)[1]} (only stochastic "
                                f"adapters such as pvera have inference modes)")
    cal = overrides.get("calibration")
    if cal is not None and str(cal) not in calibration.CALIBRATIONS:
        raise EvaluateError(f"calibration={cal!r} is not valid; use one of: {', '.join(calibration.CALIBRATIONS)}")


def evaluate_run(src: str | Path, overrides: Mapping[str, Any] | None = None, *, out_dir: str | Path | None = None,
                 record_extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate the saved weights of run ``src`` with ``overrides`` (dotted keys, evaluation
    options only); append the row (unless its key has an ok row and ``force`` is not set) and
    return it."""
    src = Path(src)
    overrides = dict(overrides or {})
    meta = check_run(src, overrides)
    trained = _read_record(src)
    model_over = {k: v for k, v in overrides.items() if k not in ("force",)}
    model, cfg = artifacts.load_run(src, model_over)
    own_source = data_source(cfg.task, meta["config"])
    if data_source(cfg.task, cfg) != own_source:  # data.source is for the OOD tasks' splits
        raise EvaluateError(f"data.source={cfg.data.source} would read task {cfg.task.name}'s splits from another "
                            f"source than the run ({own_source}); leave it, or pass it only for OOD tasks of "
                            f"another source")
    force = bool(overrides.get("force", False))
    _, evo = run_keys(cfg)
    train = meta["train_key"]
    key = key_hash(train, evo)
    csv_path = results_csv(overrides)
    results.check_writable(csv_path)  # a file that is not this tool's CSV: refused before anything runs
    if not force:
        prev = results.find_ok(csv_path, key)
        if prev is not None:
            log.info("skipped: %s already has an ok row for %s with these evaluation options (%s, test_acc %s); "
                     "force=true evaluates again", csv_path, src, prev.get("timestamp"), prev.get("test_acc"))
            return dict(prev, skipped=True)
    log.info("evaluating the saved weights of %s (no training): %s", src,
             " ".join(f"{k}={v}" for k, v in overrides.items()) or "its own settings")
    t0 = time.perf_counter()
    test, cols, probs = _score(model, cfg)
    seconds = time.perf_counter() - t0
    stamp = _dt.datetime.now()
    out = Path(out_dir) if out_dir else RunDir(src).evaluation(stamp, key).path
    out.mkdir(parents=True, exist_ok=True)
    same_inference = all(meta["config"]["adapter"].get(k) == cfg.adapter.get(k) for k in _inference_options())
    record: dict[str, Any] = {k: trained.get(k) for k in FROM_TRAINING if k in trained}
    if same_inference:
        record.update({k: trained.get(k) for k in VALIDATION if k in trained})
    record.update(
        timestamp=stamp.isoformat(timespec="seconds"), task=cfg.task.name, adapter=cfg.adapter.name,
        backbone=cfg.backbone.name, seed=int(cfg.seed), status="ok",
        adapter_options=json.dumps(adapter_options(cfg.adapter), sort_keys=True),
        config_hash=key, train_key=meta["train_hash"], eval_options=json.dumps(evo, sort_keys=True, default=str),
        setting=setting_of(train, evo), evaluated_from=str(src), run_dir=str(out),
        overrides=" ".join(f"{k}={v}" for k, v in overrides.items()), versions=versions(),
        train_seconds=0.0, eval_seconds=round(seconds, 3), **cols)
    record.update(record_extra or {})
    RunDir(out).write_predictions(probs.numpy(), test.labels.numpy())
    results.write_json(out / "record.json", record)
    results.append(csv_path, results.make_row(**record))
    log.info("%s %s seed %s evaluated (no training, train_seconds 0, %.1f s): test_acc %.2f nll %.4f ece %.4f -> %s",
             record["task"], record["adapter"], record["seed"], seconds, record["test_acc"], record["test_nll"],
             record["test_ece"], csv_path)
    return record


def _score(model, cfg):
    """``(test predictions, metric columns, probabilities)`` of ``model`` under ``cfg``, scored as
    training scores its model (the same test stream, OOD and calibration)."""
    rt = cfg.runtime
    set_threads(rt)
    settings = dict(OmegaConf.to_container(cfg.trainer, resolve=True), eval_batch_size=rt.eval_batch_size,
                    progress=rt.progress)
    trainer = Trainer(model, settings, resolve_device(rt.get("device")), seed=int(cfg.seed))
    load, load_task_test = split_loaders(cfg, input_size(model.backbone))
    test = trainer.predict(load(cfg.protocol.test_split), stream=TEST_STREAM)  # the run's own test pass's stream
    cols, probs = score(cfg, trainer, test, load, load_task_test)
    return test, cols, probs


def _inference_options() -> tuple[str, ...]:
    return tuple(k.split(".", 1)[1] for k, role in EVALUATION_OPTIONS.items() if role == INFERENCE)


def check_run(src: Path, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Everything about run ``src`` that can be checked before evaluating anything: its weight
    file's header, the overrides against its adapter, its config.yaml and record.json; returns the
    weight file's metadata."""
    meta = artifacts.read_metadata(src)
    check_overrides(overrides, meta["config"].get("adapter", {}))
    cfg = OmegaConf.create(meta["config"])
    artifacts.check_run_config(src, cfg)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    validate(cfg)  # the values, by the schema training uses (ConfigError: one line)
    if results_csv(overrides).is_dir():
        raise EvaluateError(f"results_csv={results_csv(overrides)} is a directory; name a CSV file")
    _read_record(src)
    return meta


def _read_record(src: Path) -> dict[str, Any]:
    """The training run's record.json ({} when it has none); a damaged one is an ArtifactError."""
    p = src / "record.json"
    if not p.is_file():
        return {}
    try:
        record = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{p} is damaged ({type(e).__name__}); restore it, or delete it to evaluate without the "
                            f"training row's columns (protocol, epochs, params, choice)") from None
    if not isinstance(record, dict):
        raise ArtifactError(f"{p} is damaged (not a JSON object); restore it, or delete it to evaluate without the "
                            f"training row's columns (protocol, epochs, params, choice)")
    return record


# ---------------------------------------------------------------- the command
def parse_value(text: str) -> Any:
    """A command-line value as Hydra reads it (``mc``, ``32``, ``[demo,cifar100]``, ``null``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_override(f"x={text}")
    except Exception as e:  # noqa: BLE001 - Hydra's parser raises its own types
        raise EvaluateError(f"cannot read the value {text!r} ({' '.join(str(e).split())[:120]}); write it as on "
                            f"the training command line") from None
    v = parsed.value()
    return OmegaConf.to_container(OmegaConf.create({"v": v}))["v"] if not isinstance(v, (str, int, float, bool)) else v


def run_dirs(paths: list[str], runs: list[str]) -> list[Path]:
    out = [Path(p) for p in paths]
    for r in runs:
        root = Path(r)
        if not root.is_dir():
            raise ArtifactError(f"--runs {r}: no such directory")
        found = sorted(p.parent for p in root.rglob(artifacts.FILENAME) if not RunDir.in_evaluation(p))
        if not found:
            raise ArtifactError(f"--runs {r}: no {artifacts.FILENAME} under it (no run saved weights there)")
        out += found
    return out


def build_parser():
    import argparse

    ap = argparse.ArgumentParser(prog="pvera-bench evaluate", description=__doc__.split("\n\n")[0],
                                 epilog="Overrides: " + ", ".join(EVALUATION_OPTIONS))
    ap.add_argument("items", nargs="*", metavar="RUN_DIR|key=value",
                    help="run directories holding adapter.safetensors, and evaluation overrides key=value")
    ap.add_argument("--runs", nargs="+", default=[], metavar="DIR", help="every run under DIR with saved weights")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")

    items = args.items + [r for r in args.runs if "=" in r]  # `--runs DIR key=value`: argparse took both
    runs = [r for r in args.runs if "=" not in r]
    try:
        overrides = {}
        for item in (a for a in items if "=" in a):
            k, _, v = item.partition("=")
            overrides[k.lstrip("+")] = parse_value(v)
        dirs = run_dirs([a for a in items if "=" not in a], runs)
        if not dirs:
            raise EvaluateError("name at least one run directory (or --runs DIR)")
        for d in dirs:  # every file and override checked before anything is evaluated or appended
            check_run(d, overrides)
        for d in dirs:
            evaluate_run(d, overrides)
    except (ArtifactError, EvaluateError, *USER_ERRORS) as e:
        print(f"pvera-bench: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0
