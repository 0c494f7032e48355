"""The training command checked whole before Hydra creates a directory or a run writes a row (issue 24):
every bad input is one line (exit 2), and leaves no outputs/, multirun/ or results/ behind."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pvera_bench import preflight
from pvera_bench.cli import main

FAST = ["task=demo", "backbone=vit_tiny_random", "trainer.epochs=1", "adapter=lora", "runtime.progress=false"]


def refused(capsys, args: list[str], cwd: Path) -> str:
    """The one error line of ``pvera-bench ARGS`` run in ``cwd``; checks that nothing was created."""
    before = set(cwd.iterdir())
    assert main(args) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("pvera-bench: warning:")]
    assert len(err) == 1 and err[0].startswith("pvera-bench: error: "), err
    assert set(cwd.iterdir()) == before  # no outputs/, multirun/, results/ (nor a probe left behind)
    return err[0]


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    return tmp_path


@pytest.mark.parametrize("extra,expect", [
    (["foo=bar"], "foo: no such option in this config"),
    (["trainer.foo=1"], "trainer.foo: no such option in this config"),
    (["ood_task=["], "cannot parse the override 'ood_task=['"),
    (["task.num_classes=0"], "task.num_classes=0 is invalid: allowed an integer >= 2"),
    (["trainer.epochs=0"], "trainer.epochs=0 is invalid"),
    (["backbone.checkpoint={cwd}/adir"], "adir is a directory; pass the path of a weights file"),
    (["backbone.checkpoint={cwd}/none.safetensors"], "none.safetensors does not exist"),
    (["results_csv={cwd}/adir"], "adir is a directory; give the path of a CSV file"),
    (["results_csv=/proc/nope/x.csv"], "results_csv=/proc/nope/x.csv cannot be created in /proc"),
    (["hydra.run.dir={cwd}/afile/x"], "afile is a file, not a directory"),
    (["ood_task=nope"], "unknown ood_task 'nope'"),
    (["seed=0,1", "hydra.sweep.dir={cwd}/afile/x", "-m"], "hydra.sweep.dir="),
])
def test_bad_inputs_are_one_line_and_leave_nothing(capsys, cwd, extra, expect):
    args = FAST + [a.format(cwd=cwd) for a in extra]
    line = refused(capsys, (["-m"] if "-m" in args else []) + [a for a in args if a != "-m"], cwd)
    assert expect in line


def test_a_recipe_without_the_task_is_one_line_with_cfg_job(capsys, cwd):
    line = refused(capsys, ["recipe=vpetl", "task=demo", "--cfg", "job", "--resolve"], cwd)
    assert "recipe=vpetl sets per-task values" in line and "'demo' is not one of them" in line


def test_no_task_is_one_line(capsys, cwd):
    line = refused(capsys, ["adapter=lora"], cwd)
    assert "You must specify 'task'" in line and "demo" in line


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_a_logger_without_its_package_is_refused_before_training(capsys, cwd):
    line = refused(capsys, FAST + ["logger=wandb"], cwd)
    assert "logger=wandb needs the wandb package" in line


def test_a_sweep_without_data_stops_at_the_first_run_naming_what_it_spared(capsys, cwd):
    line = refused(capsys, ["-m", "task=cifar100,dtd,svhn", "seed=0,1", "backbone=vit_tiny_random", "adapter=lora",
                            "data.source=folder", f"data.dir={cwd}/nothing"], cwd)
    assert "[sweep run 1 of 6: task=cifar100 seed=0;" in line and "6 runs spared]" in line


def test_a_sweep_is_expanded_as_hydras_basic_sweeper_does(cwd):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pvera_bench.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        job = lambda o: compose(config_name="config", overrides=o, return_hydra_config=True)  # noqa: E731
        multi, jobs = preflight.expand(["task=demo", "adapter=lora,ia3", "seed=range(0,3)"], True, loader, job)
        assert multi and len(jobs) == 6 and jobs[0] == ["task=demo", "adapter=lora", "seed=0"]
        multi, jobs = preflight.expand(["experiment=demo"], False, loader, job)  # hydra.mode: MULTIRUN, glob(*)
        assert multi and sorted(j[0] for j in jobs) == sorted(f"adapter={a}" for a in __import__(
            "pvera_bench.cli", fromlist=["group_options"]).group_options("adapter"))
        multi, jobs = preflight.expand(["task=demo"], False, loader, job)
        assert not multi and jobs == [["task=demo"]]


@pytest.mark.parametrize("epochs,warmup,warns", [(3, 10, True), (10, 10, True), (11, 10, False), (1, 0, False),
                                                 (2, 1.5, False)])
def test_a_run_that_ends_inside_its_warmup_is_warned_in_one_line(epochs, warmup, warns):
    w = preflight.warmup_warning({"epochs": epochs, "warmup_epochs": warmup})
    assert (w is not None) == warns
    if warns:
        assert f"trainer.epochs={epochs} ends inside the warm-up" in w and "\n" not in w


def test_writable_dir_probes_and_leaves_nothing(tmp_path):
    preflight.writable_dir(tmp_path / "a" / "b", "x")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(preflight.PreflightError, match="is a file"):
        (tmp_path / "f").write_text("")
        preflight.writable_dir(tmp_path / "f" / "g", "x")


@pytest.mark.parametrize("args", [["task=demo", "--cfg", "job"], ["task=demo", "--cfg", "hydra", "-p", "hydra.run"],
                                  ["task=demo", "--info"], ["task=demo", "backbone=vit_tiny_random"]])
def test_good_commands_pass(cwd, args):
    preflight.check(args)
    assert sorted(p.name for p in cwd.iterdir()) == ["adir", "afile"]
