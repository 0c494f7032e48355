"""The command line: config composition, name checks, end-to-end runs, resume, sweeps, launchers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pvera_bench import adapters, results, tasks
from pvera_bench.cli import check_choices, expand_task_words, group_options, main
from pvera_bench.paths import config_dir
from pvera_bench.identity import config_hash

from helpers_data import make_folder_tree

FAST = ["backbone=vit_tiny_random", "task=demo", "protocol=holdout", "trainer.epochs=1", "runtime.progress=false"]


def rows(path: Path) -> list[dict]:
    return results.read(path) if path.exists() else []


# ---------------------------------------------------------------- configs
@pytest.mark.parametrize("group", ["adapter", "backbone", "task", "protocol", "experiment"])
def test_every_config_composes(group):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        for option in group_options(group):
            overrides = [f"{group}={option}"] + ([] if group == "task" else ["task=demo"])
            cfg = compose("config", overrides=overrides)
            OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
            if group == "adapter":
                assert cfg.adapter.name == option
            if group in ("task", "backbone", "protocol"):
                assert cfg[group].name == option


def test_adapter_configs_match_the_registry():
    assert group_options("adapter") == adapters.available()


def test_resume_key_ignores_runtime_settings():
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        a = compose("config", overrides=["task=demo", "runtime.device=cpu"])
        b = compose("config", overrides=["task=demo", "runtime.device=cpu", "results_csv=x.csv", "data.dir=/d",
                                         "runtime.threads=3", "runtime.eval_batch_size=8"])
        c = compose("config", overrides=["task=demo", "trainer.lr_adapter=0.5"])
        d = compose("config", overrides=["task=demo", "seed=1"])
    assert config_hash(a) == config_hash(b)
    assert len({config_hash(a), config_hash(c), config_hash(d)}) == 3


def test_task_words_expand():
    (arg,) = expand_task_words(["task=vtab"])
    assert arg == "task=" + ",".join(tasks.vtab_tasks()) and len(tasks.vtab_tasks()) == 19
    (arg,) = expand_task_words(["task=specialized,demo"])
    assert arg == "task=patch_camelyon,eurosat,resisc45,diabetic_retinopathy,demo"


@pytest.mark.parametrize("arg,group", [("adapter=loraa", "adapter"), ("task=cifar10", "task"),
                                       ("adapter=lora,nope", "adapter")])
def test_unknown_names_exit_nonzero_listing_valid_names(arg, group, capsys):
    assert main([arg, "task=demo"] if group == "adapter" else [arg]) == 2
    err = capsys.readouterr().err
    valid = adapters.available() if group == "adapter" else tasks.available()
    assert f"unknown {group}" in err and all(name in err for name in valid)
    assert check_choices(["adapter=lora", "task=demo"]) is None


def test_help_lists_every_group_and_choice(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in adapters.available() + tasks.vtab_tasks() + ["vit_b16", "pvera_paper"])


def test_unknown_adapter_in_a_subprocess(cli, tmp_path):
    p = cli("adapter=nope", "task=demo")
    assert p.returncode == 2 and f"valid adapter names: {', '.join(adapters.available())}" in p.stderr
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------- single runs
def test_run_writes_a_row_and_its_record(cli, tmp_path):
    p = cli("adapter=lora", *FAST)
    assert p.returncode == 0, p.stderr
    (row,) = rows(tmp_path / "results" / "results.csv")
    assert row["status"] == "ok" and row["adapter"] == "lora" and row["task"] == "demo"
    assert row["backbone"] == "vit_tiny_random" and row["protocol"] == "holdout" and row["seed"] == "0"
    # lora r=8 on q and v of a width-64, 4-block ViT; head 64 * 10 + 10
    assert int(row["params_adapter"]) == 4 * 2 * 2 * 64 * 8 and int(row["params_head"]) == 650
    assert int(row["params_trainable"]) == int(row["params_adapter"]) + 650
    assert 0 <= float(row["test_acc"]) <= 100 and float(row["test_nll"]) > 0 and row["error"] == ""
    run_dir = Path(row["run_dir"])
    assert (run_dir / "record.json").is_file() and (run_dir / "config.yaml").is_file()
    assert (run_dir / "predictions.npz").is_file()


def test_resume_skips_recorded_runs_and_force_reruns(cli, tmp_path):
    csv = tmp_path / "results" / "results.csv"
    assert cli("adapter=ia3", *FAST).returncode == 0
    p = cli("adapter=ia3", *FAST, "runtime.eval_batch_size=7")  # this runtime setting does not change the key
    assert p.returncode == 0 and "skipped" in p.stderr + p.stdout
    assert len(rows(csv)) == 1
    assert cli("adapter=ia3", *FAST, "force=true").returncode == 0
    assert len(rows(csv)) == 2


def test_offline_without_weights_fails_fast_and_writes_no_ok_row(cli, tmp_path):
    p = cli("adapter=lora", "backbone=vit_b16", "task=demo")
    assert p.returncode != 0
    assert "vit_base_patch16_224.orig_in21k" in p.stderr and "backbone.checkpoint=" in p.stderr
    assert "Traceback" not in p.stderr
    assert all(r["status"] != "ok" for r in rows(tmp_path / "results" / "results.csv"))


def test_missing_data_dir_says_how_to_prepare(cli, tmp_path):
    p = cli("adapter=lora", "task=cifar100", "backbone=vit_tiny_random", "data.source=folder",
            f"data.dir={tmp_path / 'nothing'}")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "data" in p.stderr.lower()
    p = cli("adapter=lora", "task=cifar100", "backbone=vit_tiny_random", "data.source=tfds",
            f"data.dir={tmp_path / 'nothing'}")
    assert p.returncode == 2 and "pvera-bench data prepare" in p.stderr


def test_folder_data_end_to_end(cli, tmp_path):
    root = make_folder_tree(tmp_path / "vtab-1k", "cifar", n_per_split=12, num_classes=100, size=32)
    args = ("adapter=vera", "task=cifar100", "data.source=folder", f"data.dir={root}", "backbone=vit_tiny_random",
            "trainer.epochs=1", "runtime.progress=false")
    # the default recipe drops the last incomplete batch (NOAH): 24 images in batches of 64 leave none
    p = cli(*args)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "trainer.drop_last=true with trainer.batch_size=64 and 24 training images leaves no batch" in p.stderr
    p = cli(*args, "trainer.batch_size=8")
    assert p.returncode == 0, p.stderr
    row = rows(tmp_path / "results" / "results.csv")[-1]
    assert row["status"] == "ok" and row["task"] == "cifar100" and row["data_source"] == "folder"
    assert row["protocol"] == "vtab"


# ---------------------------------------------------------------- sweeps
def test_an_interrupted_sweep_runs_only_what_is_missing(cli, tmp_path):
    csv = tmp_path / "results" / "results.csv"
    assert cli("-m", "adapter=lora", *FAST).returncode == 0  # the part of the sweep that finished
    p = cli("-m", "adapter=lora,ia3", *FAST)  # the whole sweep, started again
    assert p.returncode == 0, p.stderr
    got = rows(csv)
    assert sorted(r["adapter"] for r in got) == ["ia3", "lora"]  # each exactly once
    assert p.stdout.count("recorded earlier") == 1


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(cli, tmp_path):
    # a failure no check can foresee (divergence; a bad ood_task is refused before the sweep starts,
    # tests/test_preflight.py): no warmup, so the first epoch runs at the diverging learning rate
    p = cli("-m", "adapter=lora,ia3", *FAST, "ood_task=demo", "trainer.warmup_epochs=0", "trainer.lr_head=1e-3,1e30")
    assert p.returncode == 0, p.stderr
    got = rows(tmp_path / "results" / "results.csv")
    assert len(got) == 4
    failed = [r for r in got if r["status"] == "failed"]
    assert len(failed) == 2 and all("diverged" in r["error"] for r in failed)
    assert all(r["test_acc"] == "" for r in failed)
    ok = [r for r in got if r["status"] == "ok"]
    assert len(ok) == 2 and all(0 <= float(r["ood_auroc"]) <= 1 for r in ok)
    assert "Sweep summary: 4 runs" in p.stdout


def test_diverging_run_is_recorded_as_failed(cli, tmp_path):
    # no warmup: the first epochs would run at trainer.warmup_lr
    p = cli("adapter=lora", *FAST, "trainer.lr_head=1e30", "trainer.lr_adapter=1e30", "trainer.warmup_epochs=0")
    assert p.returncode == 2 and "diverged" in p.stderr and "Traceback" not in p.stderr
    (row,) = rows(tmp_path / "results" / "results.csv")
    assert row["status"] == "failed" and row["test_acc"] == "" and "diverged" in row["error"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_launchers_record_every_row_once(cli, tmp_path, launcher):
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else ["hydra.launcher.timeout_min=10"]
    p = cli("-m", f"hydra/launcher={launcher}", *extra, "adapter=lora,ia3,linear_probe", *FAST, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    got = rows(tmp_path / "results" / "results.csv")
    assert sorted(r["adapter"] for r in got) == ["ia3", "linear_probe", "lora"]
    assert all(r["status"] == "ok" for r in got)
    assert len({r["run_dir"] for r in got}) == 3  # output directories never collide


@pytest.mark.slow
def test_demo_end_to_end_then_resumed(cli, tmp_path):
    p = cli("experiment=demo", timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    got = rows(tmp_path / "results" / "results.csv")
    assert sorted(r["adapter"] for r in got) == adapters.available()
    assert all(r["status"] == "ok" and r["backbone"] == "vit_tiny_pretrained" for r in got)
    # every adapter well above chance (10 classes)
    assert all(float(r["test_acc"]) > 20 for r in got), [(r["adapter"], r["test_acc"]) for r in got]
    assert all(r["test_nll"] and r["test_ece"] and r["test_brier"] for r in got)
    table = p.stdout[p.stdout.index("Sweep summary"):]
    assert all(name in table for name in adapters.available()) and "for demos and tests only" in table
    p = cli("experiment=demo")
    assert p.returncode == 0
    assert len(rows(tmp_path / "results" / "results.csv")) == len(adapters.available())
    assert p.stdout.count("recorded earlier") == len(adapters.available())


def test_pvera_monte_carlo_metrics_are_recorded(cli, tmp_path):
    p = cli("adapter=pvera", "task=demo", "backbone=vit_tiny_random", "adapter.inference=mc", "adapter.mc_samples=8",
            "trainer.epochs=1", "runtime.progress=false")
    assert p.returncode == 0, p.stderr
    (row,) = rows(tmp_path / "results" / "results.csv")
    assert row["status"] == "ok" and row["mc_samples"] == "8"
    low, high = float(row["mc_acc_low"]), float(row["mc_acc_high"])
    assert 0 <= low <= high <= 100 and float(row["mc_entropy"]) > 0
    assert all(row[k] != "" for k in ("test_nll", "test_ece", "test_brier"))
    assert '"inference": "mc"' in row["adapter_options"]


def test_grid_choice_from_the_command_line_is_recorded(cli, tmp_path):
    p = cli("adapter=lora", "task=demo", "backbone=vit_tiny_random", "trainer.epochs=1", "runtime.progress=false",
            "++protocol.grid={trainer.lr_adapter:[1e-3,1e-2],adapter.r:[4]}")
    assert p.returncode == 0, p.stderr
    (row,) = rows(tmp_path / "results" / "results.csv")
    chosen = json.loads(row["chosen"])
    assert chosen["adapter.r"] == 4 and chosen["trainer.lr_adapter"] in (1e-3, 1e-2)
    assert json.loads(row["adapter_options"])["r"] == 4 and int(row["params_adapter"]) == 4 * 2 * 2 * 64 * 4
    scores = json.loads(row["grid_scores"])
    assert len(scores) == 2 and float(row["val_acc"]) == max(s["val_acc"] for s in scores)
