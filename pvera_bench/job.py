"""One Hydra job (``hydra_app``'s task function body): skip it, finish it, re-evaluate saved
weights, or train.

Above the two siblings it chooses between: training (:mod:`.run`) and evaluation of saved
weights (:mod:`.evaluate`). The row's key is :mod:`.identity`'s.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from . import artifacts, evaluate, results
from .assemble import USER_ERRORS, one_line, or_exit
from .checkpoint import RunState
from .identity import digest, evaluation_overrides, key_hash, run_keys
from .run import run_state, train

log = logging.getLogger("pvera_bench")


def run(cfg: DictConfig, run_dir: Path, overrides: list[str], multirun: bool) -> dict[str, Any]:
    """Run ``cfg`` unless an ``ok`` row with the same key exists; append its row.

    The run's state (``RunState``: checkpoints, finished candidates, the final model, and the
    record itself before its row is appended) is removed only once the row is in the CSV: a run
    killed at any point, started again, trains nothing that had finished, and one killed after
    its record was saved only appends that record's row. A setting whose training key has saved
    weights (an earlier run that differs only in evaluation options) is evaluated, not trained."""
    csv_path = Path(cfg.results_csv)
    refused = or_exit(results.check_writable, csv_path)  # not this tool's CSV: refused before training
    if refused is not None:
        return refused
    train_key, eval_options = run_keys(cfg)  # what trains; what only evaluation reads
    key = key_hash(train_key, eval_options)
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
        saved = evaluate.find_saved(csv_path, digest(train_key))
        if saved is not None:  # these weights are trained already: a new evaluation of them, no training
            return _evaluate_saved(cfg, saved, run_dir, overrides, multirun)
    return train(cfg, run_dir, overrides, multirun, (train_key, eval_options), state)


def _evaluate_saved(cfg: DictConfig, saved: Path, run_dir: Path, overrides: list[str],
                    multirun: bool) -> dict[str, Any]:
    log.info("the weights of this setting are saved in %s: evaluating them instead of training", saved)
    try:
        return evaluate.evaluate_run(saved, evaluation_overrides(cfg), out_dir=run_dir,
                                     record_extra=dict(overrides=" ".join(overrides)))
    except (artifacts.ArtifactError, evaluate.EvaluateError, *USER_ERRORS) as e:  # never a silent retrain
        if multirun:
            log.error("could not evaluate the saved weights in %s (no row recorded): %s", saved, one_line(e))
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
