"""The `logger` config group: what each tracker stores, read back with the tracker's own reader."""

from __future__ import annotations

import csv
import math

import pytest

from pvera_bench import loggers, results

EPOCHS = [dict(epoch=e, lr=1e-3 / e, train_loss=1.0 / e, train_acc=20.0 * e, val_acc=15.0 * e, val_loss=2.0 / e)
          for e in (1, 2, 3)]
FINAL = dict(test_acc=91.5, test_nll=0.25, test_ece=0.03, test_brier=0.1, val_acc=45.0, status="ok", adapter="lora",
             ood_auroc=float("nan"))
CFG = {"adapter": {"name": "lora", "r": 8}, "trainer": {"epochs": 3, "lr_adapter": 0.001}, "seed": 0}


def feed(logger):
    logger.log_config(CFG)
    for e in EPOCHS:
        logger.log_epoch("select-0", e)
    logger.log_final(FINAL)
    logger.close("ok")


def test_none_and_unknown():
    assert type(loggers.create(None, ".", "x")) is loggers.Logger
    with pytest.raises(loggers.LoggerError, match="valid loggers: mlflow, none, tensorboard, wandb"):
        loggers.create({"name": "nope"}, ".", "x")
    assert loggers.final_metrics(FINAL) == dict(test_acc=91.5, test_nll=0.25, test_ece=0.03, test_brier=0.1,
                                                val_acc=45.0)  # the registry's columns holding a number


def tb_scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_event_file_read_back(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    feed(loggers.create({"name": "tensorboard"}, tmp_path, "demo_lora_s0"))
    s = tb_scalars(tmp_path / "tensorboard")
    assert s["select-0/val_acc"] == [(1, 15.0), (2, 30.0), (3, 45.0)]
    assert [v for _, v in s["select-0/train_loss"]] == pytest.approx([1.0, 0.5, 1 / 3])
    assert s["final/test_acc"] == [(0, 91.5)] and "final/ood_auroc" not in s


def test_mlflow_sqlite_store_read_back(tmp_path):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from mlflow.tracking import MlflowClient

    lg = loggers.create({"name": "mlflow", "experiment": "t"}, tmp_path, "demo_lora_s0")
    feed(lg)
    assert lg.uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}" and (tmp_path / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=lg.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "demo_lora_s0"
    hist = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "select-0/val_acc"))
    assert hist == [(1, 15.0), (2, 30.0), (3, 45.0)]
    assert run.data.metrics["test_acc"] == 91.5 and "ood_auroc" not in run.data.metrics
    assert run.data.params["adapter.r"] == "8" and run.data.params["trainer.lr_adapter"] == "0.001"


def test_missing_tracker_is_one_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(loggers.LoggerError, match=r'pip install -e "\.\[wandb\]"'):
        loggers.create({"name": "wandb"}, ".", "x")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tensorboard", "mlflow"])
def test_logger_on_the_demo_task(cli, tmp_path, name):
    pytest.importorskip(name, reason=f"the {name} extra is not installed")
    p = cli("adapter=lora", "backbone=vit_tiny_random", "task=demo", "protocol=holdout", "trainer.epochs=3",
            "runtime.progress=false", f"logger={name}")
    assert p.returncode == 0, p.stderr
    (row,) = results.read(tmp_path / "results" / "results.csv")
    run_dir, test_acc = row["run_dir"], float(row["test_acc"])
    if name == "tensorboard":
        s = tb_scalars(tmp_path / run_dir / "tensorboard")
        val = [v for _, v in s["select-0/val_acc"]]
        final = s["final/test_acc"][0][1]
    else:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{(tmp_path / run_dir / 'mlflow.db').resolve()}")
        (run,) = client.search_runs([client.get_experiment_by_name("pvera-bench").experiment_id])
        val = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "select-0/val_acc"),
                                       key=lambda m: m.step)]
        final = run.data.metrics["test_acc"]
    assert len(val) == 3 and all(0 <= v <= 100 for v in val)  # one validation accuracy per epoch
    with open(tmp_path / run_dir / "history.csv", newline="") as f:  # the same numbers as history.csv
        hist = [float(r["val_acc"]) for r in csv.DictReader(f) if r["fit"] == "select-0"]
    assert val == pytest.approx(hist, abs=1e-4)
    assert math.isclose(final, test_acc, abs_tol=1e-4)  # the CSV rounds to 6 decimals
