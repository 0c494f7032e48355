"""Saved weights (adapter.safetensors), `pvera-bench evaluate`, the training key vs evaluation options,
the OOD matrix and temperature scaling."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pvera_bench import adapters, artifacts, calibration, metrics, ood, results
from pvera_bench.artifacts import ArtifactError
from pvera_bench.data import DataError
from pvera_bench.evaluate import main as evaluate_main
from pvera_bench.paths import config_dir
from pvera_bench.assemble import build_model
from pvera_bench.identity import config_hash, run_keys

from conftest import tiny_vit
from helpers_data import make_folder_tree

FAST = ["backbone=vit_tiny_random", "task=demo", "protocol=holdout", "trainer.epochs=1", "runtime.progress=false",
        "runtime.threads=1"]


def cfg_of(*overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def rows(path: Path) -> list[dict]:
    return results.read(path) if path.exists() else []


# ---------------------------------------------------------------- the file, every adapter
@pytest.mark.parametrize("name", adapters.available())
def test_saved_weights_rebuild_the_same_model(tmp_path, name):
    """Every adapter: the file holds exactly the trainable tensors; loading gives the same logits."""
    cfg = cfg_of(f"adapter={name}", "backbone=vit_tiny_random", "task=demo", "adapter.r=4" if name in (
        "lora", "dora", "vera", "pvera") else "seed=0")
    c = OmegaConf.to_container(cfg, resolve=True)
    model = build_model(c)
    torch.manual_seed(123)
    with torch.no_grad():  # "trained": every trainable tensor moved away from its init
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    path = artifacts.save(tmp_path, model, c, candidate=0, chosen={}, train_key={"k": 1}, config_hash="h", versions="{}")
    from safetensors.torch import load_file

    saved = load_file(str(path))
    own = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(saved) == set(own) and sum(t.numel() for t in saved.values()) == adapters.count_trainable(model)
    assert not any("shared" in n for n in saved)  # VeRA/PVeRA projections are regenerated, not stored
    loaded, lcfg = artifacts.load_run(tmp_path)
    assert not loaded.training and lcfg.adapter.name == name
    x = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_a_replaced_backbone_weights_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    ck = tmp_path / "vit.safetensors"
    torch.manual_seed(0)
    save_file(tiny_vit(embed_dim=64, depth=4).state_dict(), str(ck))
    c = OmegaConf.to_container(cfg_of("adapter=lora", "backbone=vit_tiny_random", "task=demo",
                                      f"backbone.checkpoint={ck}"), resolve=True)
    run = tmp_path / "run"
    run.mkdir()
    artifacts.save(run, build_model(c), c, candidate=0, chosen={}, train_key={}, config_hash="h", versions="{}")
    artifacts.load_run(run)  # loads
    torch.manual_seed(1)
    save_file(tiny_vit(embed_dim=64, depth=4).state_dict(), str(ck))  # other weights, same shapes
    with pytest.raises(ArtifactError, match="other backbone weights"):
        artifacts.load_run(run)


# ---------------------------------------------------------------- the key split
def test_evaluation_options_are_not_in_the_training_key():
    def split(*o):
        cfg = cfg_of("adapter=pvera", "task=demo", "backbone=vit_tiny_random", *o)
        return run_keys(cfg)

    base = split("protocol=vtab")
    for o in ("adapter.inference=mc", "calibration=temperature", "ood_task=demo"):
        other = split("protocol=vtab", o)
        assert other[0] == base[0] and other[1] != base[1], o  # same weights, another evaluation
    # mc_samples under inference=mean changes no number: neither part of the key (README, The results CSV)
    assert split("protocol=vtab", "adapter.mc_samples=32") == base
    mc4, mc32 = split("protocol=vtab", "adapter.inference=mc", "adapter.mc_samples=4"), \
        split("protocol=vtab", "adapter.inference=mc", "adapter.mc_samples=32")
    assert mc4[0] == mc32[0] == base[0] and mc4[1] != mc32[1]
    assert split("protocol=vtab", "trainer.lr_adapter=0.1")[0] != base[0]
    # holdout keeps the best epoch by validation scores, which the inference mode computes: it trains
    assert split("protocol=holdout", "adapter.inference=mc")[0] != split("protocol=holdout")[0]
    assert config_hash(cfg_of("task=demo", "calibration=temperature")) != config_hash(cfg_of("task=demo"))


def test_ood_task_names():
    assert ood.ood_names(None, "demo") == [] and ood.ood_names("dtd", "dtd") == ["dtd"]  # one name: as given
    nat = ood.ood_names("natural", "dtd")
    assert "dtd" not in nat and "cifar100" in nat and len(nat) == 6
    assert ood.ood_names(["demo", "dtd", "svhn"], "dtd") == ["demo", "svhn"]
    assert len(ood.ood_names("vtab", "demo")) == 19
    with pytest.raises(DataError, match="unknown ood_task 'nope'"):
        ood.ood_names(["demo", "nope"], "dtd")


# ---------------------------------------------------------------- temperature scaling, known answers
def test_temperature_scaling_recovers_a_known_overconfidence():
    """Labels drawn from softmax(z); the model says softmax(3 z): the fitted T is 3, and NLL/ECE fall."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 10, generator=g, dtype=torch.float64) * 1.5
    y = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)
    over = (3.0 * z).softmax(-1)
    t = calibration.fit_temperature(over, y)
    assert 2.85 < t < 3.15
    after = calibration.scaled(over, t)
    assert metrics.nll(after, y) < metrics.nll(over, y) and metrics.ece(after, y) < 0.5 * metrics.ece(over, y)
    assert torch.equal(after.argmax(-1), over.argmax(-1))
    # the optimiser's answer is the minimum: a step either way costs NLL
    logp = over.log()
    at = calibration.nll_at(logp, y, t)
    assert at <= calibration.nll_at(logp, y, t * 1.01) and at <= calibration.nll_at(logp, y, t / 1.01)


def test_temperature_of_a_calibrated_model_is_one():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(20000, 5, generator=g, dtype=torch.float64)
    y = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)
    assert abs(calibration.fit_temperature(z.softmax(-1), y) - 1.0) < 0.05


# ---------------------------------------------------------------- end to end
def _train(cli, tmp_path, *args) -> dict:
    p = cli(*FAST, *args)
    assert p.returncode == 0, p.stderr
    return rows(tmp_path / "results" / "results.csv")[-1]


def last_dir(tmp_path: Path) -> str:
    return rows(tmp_path / "results" / "results.csv")[-1]["run_dir"]


def _eval(capsys, *args) -> tuple[int, str]:
    rc = evaluate_main([*args, "runtime.progress=false"])
    return rc, capsys.readouterr().err


def test_evaluate_reproduces_the_run_and_scores_inference_modes(cli, tmp_path, capsys, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="pvera_bench")
    monkeypatch.chdir(tmp_path)
    row = _train(cli, tmp_path, "adapter=pvera", "adapter.r=8")
    run = Path(row["run_dir"])
    assert (run / "adapter.safetensors").is_file() and row["train_key"]
    size = (run / "adapter.safetensors").stat().st_size
    assert size < 4 * (int(row["params_trainable"]) + 1000) + 20000  # tensors and a header; no projections
    # its own settings, into another CSV: the same numbers exactly
    rc, err = _eval(capsys, str(run), "results_csv=re.csv")
    assert rc == 0, err
    (again,) = rows(tmp_path / "re.csv")
    for k in ("test_acc", "test_nll", "test_ece", "test_brier"):
        assert again[k] == row[k], k
    assert again["evaluated_from"] == str(run) and float(again["train_seconds"]) == 0.0
    assert again["train_key"] == row["train_key"] and again["config_hash"] == row["config_hash"]
    # the same key in the run's own CSV: skipped, nothing appended
    n = len(rows(tmp_path / "results" / "results.csv"))
    assert _eval(capsys, str(run))[0] == 0 and len(rows(tmp_path / "results" / "results.csv")) == n
    # four inference settings, four rows, no training
    for o in (["adapter.inference=mean", "force=true"], ["adapter.inference=fixed"],
              ["adapter.inference=mc", "adapter.mc_samples=4"], ["adapter.inference=mc", "adapter.mc_samples=32"]):
        caplog.clear()
        rc, err = _eval(capsys, str(run), *o)
        assert rc == 0 and "evaluated (no training, train_seconds 0" in caplog.text, err
    new = rows(tmp_path / "results" / "results.csv")[n:]
    assert len(new) == 4 and all(float(r["train_seconds"]) == 0.0 and r["evaluated_from"] == str(run) for r in new)
    assert new[0]["test_acc"] == row["test_acc"]
    assert [r["mc_samples"] for r in new] == ["", "", "4", "32"]
    assert len({r["config_hash"] for r in new[1:]} | {row["config_hash"]}) == 4
    assert all(json.loads(r["adapter_options"])["inference"] == m for r, m in zip(new, ("mean", "fixed", "mc", "mc")))
    # an option that changes the trained model is refused
    rc, err = _eval(capsys, str(run), "adapter.r=16")
    assert rc == 2 and "would change the trained model" in err and len(err.strip().splitlines()) == 1


def test_a_sweep_evaluates_saved_weights_instead_of_training(cli, tmp_path):
    first = _train(cli, tmp_path, "adapter=pvera", "adapter.r=8", "protocol.checkpoint=last")
    p = cli(*FAST, "adapter=pvera", "adapter.r=8", "protocol.checkpoint=last", "adapter.inference=mc",
            "adapter.mc_samples=4")
    assert p.returncode == 0, p.stderr
    log = p.stdout + p.stderr
    assert "evaluating them instead of training" in log and "evaluated (no training" in log
    assert not (Path(last_dir(tmp_path)) / "history.csv").exists()  # no epoch ran
    last = rows(tmp_path / "results" / "results.csv")[-1]
    assert last["evaluated_from"] == first["run_dir"] and float(last["train_seconds"]) == 0.0
    assert last["mc_samples"] == "4" and last["train_key"] == first["train_key"]
    # asked again: the row exists now, skipped
    p = cli(*FAST, "adapter=pvera", "adapter.r=8", "protocol.checkpoint=last", "adapter.inference=mc",
            "adapter.mc_samples=4")
    assert "skipped" in p.stdout + p.stderr and len(rows(tmp_path / "results" / "results.csv")) == 2


@pytest.mark.slow  # trains two or three runs
def test_broken_or_foreign_weights_are_one_line_exit_2_and_no_row(cli, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = Path(_train(cli, tmp_path, "adapter=lora")["run_dir"])
    b = Path(_train(cli, tmp_path, "adapter=lora", "backbone.init_seed=1")["run_dir"])
    c = Path(_train(cli, tmp_path, "adapter=lora", "runtime.save_weights=false", "seed=3")["run_dir"])
    assert not (c / "adapter.safetensors").exists()
    csv = tmp_path / "results" / "results.csv"
    n = len(rows(csv))

    def refused(*args, match):
        rc, err = _eval(capsys, *args, "force=true")
        assert rc == 2 and match in err and len(err.strip().splitlines()) == 1, err
        assert len(rows(csv)) == n

    refused(str(c), match="does not exist")  # saved nothing
    refused(str(a), "backbone.init_seed=1", match="would change the trained model")
    shutil.copy(b / "adapter.safetensors", a / "adapter.safetensors")  # another backbone's weights
    refused(str(a), match="belongs to another run")
    data = (b / "adapter.safetensors").read_bytes()
    (a / "adapter.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    refused(str(a), match="corrupt")
    (a / "adapter.safetensors").write_bytes(b"\x00" * 64)
    refused(str(a), match="corrupt")
    (a / "adapter.safetensors").unlink()
    refused(str(a), str(b), match="does not exist")  # checked before b is evaluated: no row at all
    rc, err = _eval(capsys, str(b), "force=true")
    assert rc == 0 and len(rows(csv)) == n + 1


@pytest.mark.slow  # trains two or three runs
def test_ood_matrix_equals_the_training_time_pairs_and_is_drawn(cli, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = make_folder_tree(tmp_path / "vtab-1k", "cifar", n_per_split=40, num_classes=10, size=32)
    make_folder_tree(root, "dtd", n_per_split=30, num_classes=47, size=32, seed=3)
    data = ("data.source=folder", f"data.dir={root}", "adapter=lora")
    demo = _train(cli, tmp_path, *data, "ood_task=cifar100")
    cif = _train(cli, tmp_path, *data, "task=cifar100", "ood_task=demo", "trainer.batch_size=8",
                 "task.num_classes=10")
    csv = tmp_path / "results" / "results.csv"
    n = len(rows(csv))
    rc, err = _eval(capsys, demo["run_dir"], cif["run_dir"], "ood_task=[demo,cifar100,dtd]")
    assert rc == 0, err
    ev_demo, ev_cif = rows(csv)[n:]
    m_demo, m_cif = json.loads(ev_demo["ood_aurocs"]), json.loads(ev_cif["ood_aurocs"])
    assert set(m_demo) == {"cifar100", "dtd"} and set(m_cif) == {"demo", "dtd"}  # its own task left out
    full = {r["task"]: json.loads((Path(r["run_dir"]) / "record.json").read_text())["ood_auroc"] for r in (demo, cif)}
    assert m_demo["cifar100"] == full["demo"] and m_cif["demo"] == full["cifar100"]  # exactly, full precision
    assert float(ev_demo["ood_auroc"]) == pytest.approx((m_demo["cifar100"] + m_demo["dtd"]) / 2)
    assert ev_demo["test_acc"] == demo["test_acc"]
    from pvera_bench.report import main as report_main

    png = tmp_path / "ood.png"
    assert report_main(["--results", str(csv), "--plot-ood-matrix", str(png), "--metric", "auroc"]) == 0
    assert png.stat().st_size > 10000
    assert "wrote" in capsys.readouterr().err


def test_temperature_scaling_on_an_overconfident_run(cli, tmp_path, capsys, monkeypatch):
    """The run's head scaled by 5 (logits x 5, argmax kept): the fitted T is 5 times the run's own."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    from safetensors.torch import save as tensors_bytes

    from pvera_bench import rundir

    monkeypatch.chdir(tmp_path)
    row = _train(cli, tmp_path, "adapter=lora", "trainer.epochs=3")
    run = Path(row["run_dir"])
    rc, err = _eval(capsys, str(run), "calibration=temperature")
    assert rc == 0, err
    own = rows(tmp_path / "results" / "results.csv")[-1]
    over = tmp_path / "over"
    shutil.copytree(run, over)
    f = over / "adapter.safetensors"
    with safe_open(str(f), framework="pt") as h:
        meta = h.metadata()
    t = load_file(str(f))
    t["head.weight"], t["head.bias"] = t["head.weight"] * 5, t["head.bias"] * 5
    meta.pop(rundir.DIGESTS)  # a changed tensor under the old digests would be refused: sealed again
    f.write_bytes(rundir.seal(tensors_bytes(t, metadata=meta)))
    assert _eval(capsys, str(over), "results_csv=over.csv")[0] == 0
    assert _eval(capsys, str(over), "results_csv=over.csv", "calibration=temperature")[0] == 0
    before, after = rows(tmp_path / "over.csv")
    T = float(after["temperature"])
    assert T > 1 and T == pytest.approx(5 * float(own["temperature"]), rel=1e-3)
    assert float(after["test_nll"]) < float(before["test_nll"]) and float(after["test_ece"]) < float(before["test_ece"])
    assert after["test_acc"] == before["test_acc"] and after["test_nll_uncal"] == before["test_nll"]
    assert after["calibration"] == "temperature" and after["calibration_split"] == "val200"


@pytest.mark.parametrize("where", ["tensor data", "header metadata"])
def test_a_changed_byte_of_the_weight_file_is_refused_in_one_line(tmp_path, where):
    """adapter.safetensors is sealed (rundir.seal): a byte changed in a tensor (the last 64 bytes of the
    file) or in the metadata is refused before any tensor is used, whatever the value it gives."""
    c = OmegaConf.to_container(cfg_of("adapter=lora", "backbone=vit_tiny_random", "task=demo"), resolve=True)
    path = artifacts.save(tmp_path, build_model(c), c, candidate=0, chosen={}, train_key={"k": 1}, config_hash="h",
                          versions="{}")
    artifacts.load_run(tmp_path)  # intact: loads
    blob = bytearray(path.read_bytes())
    i = len(blob) - 7 if where == "tensor data" else blob.index(b'"versions":"{}"') + len('"versions":"')
    blob[i] ^= 0x01 if where == "tensor data" else 0
    if where == "header metadata":
        blob[i:i + 2] = b"[]"  # versions "{}" -> "[]": same length, another header
    path.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="is corrupt: 1 part\\(s\\) do not match their digests") as e:
        artifacts.load_run(tmp_path)
    assert "\n" not in str(e.value) and "train the run again" in str(e.value)
