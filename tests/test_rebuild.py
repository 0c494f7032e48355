"""One builder, one plan, one identity (issue 23): saved weights rebuild the model training built,
whichever grid candidate was chosen, and the same trained model has one training key."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pvera_bench import artifacts, identity
from pvera_bench.assemble import ModelBuilder
from pvera_bench.identity import run_keys
from pvera_bench.paths import config_dir
from pvera_bench.plan import config_plan, plan_of

GRID = "protocol.grid={trainer.lr_adapter:[1e-3,1e-4]}"  # the (recipe=pvera_paper sets a grid)
ANY_GRID = "++" + GRID  # a recipe without a grid
RANKS = "protocol.grid={adapter.r:[4,8]}"  # per-candidate draws depend on every candidate's rank


def cfg_of(*overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return compose("config", overrides=["backbone=vit_tiny_random", "task=demo", "runtime.device=cpu", *overrides])


def moved(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``model`` "trained": every trainable tensor moved away from its init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


# ---------------------------------------------------------------- the builder
@pytest.mark.parametrize("overrides", [
    ("recipe=pvera_paper_exact", "adapter=vera", "adapter.r=4", "seed=1", GRID),
    ("recipe=pvera_paper_exact", "adapter=pvera", "adapter.r=4", "seed=1", GRID),
    ("adapter=vera", "adapter.r=4", "adapter.draws=pvera_code", "backbone.head_draws=after_backbone", "seed=2",
     ANY_GRID),
], ids=["vera-exact", "pvera-exact", "vera-code-draws"])
def test_the_second_candidate_of_a_seeded_grid_rebuilds_exactly(tmp_path, overrides):
    """Candidate 1 of a grid with per-candidate draws (the PVeRA code's projections, its j-th head)
    under seed 1 or 2: the weight file's candidate index and config rebuild the model training
    built (the same frozen projections and logits); before the one builder, load_run rebuilt
    candidate 0 at seed 0 and refused every such file."""
    cfg = cfg_of(*overrides)
    builder = ModelBuilder(cfg)
    assert len(builder.points) == 2
    first, second = builder(0), moved(builder(1), seed=3)
    assert artifacts.frozen_digest(first) != artifacts.frozen_digest(second)  # the draws are per candidate
    chosen = builder.points[1]
    train_key, evo = run_keys(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    for k, v in chosen.items():  # the trained model's config: the chosen point applied
        section, name = k.split(".")
        config[section][name] = v
    artifacts.save(tmp_path, second, config, candidate=1, chosen=chosen, train_key=train_key,
                   config_hash=identity.key_hash(train_key, evo), versions="{}")
    loaded, _ = artifacts.load_run(tmp_path)
    assert artifacts.frozen_digest(loaded) == artifacts.frozen_digest(second)
    images = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(loaded(images), second(images))


def test_a_file_whose_candidate_is_not_its_chosen_point_is_refused(tmp_path):
    cfg = cfg_of("adapter=lora", "adapter.r=2", ANY_GRID)
    builder = ModelBuilder(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    artifacts.save(tmp_path, builder(0), config, candidate=0, chosen=builder.points[1], train_key={},
                   config_hash="h", versions="{}")
    with pytest.raises(artifacts.ArtifactError, match="candidate 0 is not the grid point"):
        artifacts.load_run(tmp_path)


# ---------------------------------------------------------------- the plan and the key
def test_the_plan_says_whether_validation_chooses():
    holdout = dict(select_on="train800", val_split="val200", final_on=None, test_split="test", metric="acc")
    assert plan_of(dict(holdout, checkpoint="best")).chooses
    last = plan_of(dict(holdout, checkpoint="last"))
    assert last.selects and not last.chooses and not last.keeps_best  # trained on train800, nothing chosen
    vtab = dict(holdout, final_on="train800val200")
    for ckpt in ("best", "last"):  # one point, retrained on train800val200: nothing selects, nothing chooses
        p = plan_of(dict(vtab, checkpoint=ckpt))
        assert not p.selects and not p.chooses and not p.reads("checkpoint")
        assert p.splits_read == ("test", "train800val200") and p.trained_on("val200") and not p.trained_on("test")
    grid = plan_of(dict(vtab, checkpoint="last", grid={"trainer": {"lr_head": [0.1, 0.2]}}))
    assert grid.selects and grid.chooses and grid.points == ({"trainer.lr_head": 0.1}, {"trainer.lr_head": 0.2})


def test_one_point_vtab_has_one_training_key_for_best_and_last():
    """PVeRA with inference=mc: the validation scores that mc computes choose nothing in a one-point
    vtab run, so checkpoint=best and checkpoint=last are one trained model (before: two keys, and
    the second run trained again to the identical numbers)."""
    mc = ("adapter=pvera", "protocol=vtab", "adapter.inference=mc", "adapter.mc_samples=4")
    best, last = run_keys(cfg_of(*mc, "protocol.checkpoint=best")), run_keys(cfg_of(*mc, "protocol.checkpoint=last"))
    assert best == last and "inference" not in best[0]["adapter"] and best[1]["adapter"]["inference"] == "mc"
    assert not config_plan(OmegaConf.to_container(cfg_of(*mc), resolve=True)).chooses
    # holdout with checkpoint=last chooses nothing either; with checkpoint=best the mc scores choose the epoch
    holdout = ("adapter=pvera", "protocol=holdout")
    assert run_keys(cfg_of(*holdout, "protocol.checkpoint=last", "adapter.inference=mc"))[0] == \
        run_keys(cfg_of(*holdout, "protocol.checkpoint=last"))[0]
    assert run_keys(cfg_of(*holdout, "adapter.inference=mc"))[0] != run_keys(cfg_of(*holdout))[0]


@pytest.mark.parametrize("a, b", [
    (("++protocol.grid={trainer:{lr_head:[0.1,0.2]}}",), ("++protocol.grid={trainer.lr_head:[0.1,0.2]}",)),
    (("++protocol.grid={trainer.lr_head:[0.1]}",), ("trainer.lr_head=0.1",)),
    (("trainer.lr_head=0.5", "++protocol.grid={trainer.lr_head:[0.1,0.2]}"),
     ("trainer.lr_head=0.7", "++protocol.grid={trainer.lr_head:[0.1,0.2]}")),
], ids=["nested-grid", "one-value-grid", "value-the-grid-sets"])
def test_one_trained_model_has_one_training_key_however_spelt(a, b):
    ka, kb = run_keys(cfg_of("adapter=lora", *a)), run_keys(cfg_of("adapter=lora", *b))
    assert ka == kb
    assert run_keys(cfg_of("adapter=lora", "trainer.lr_head=0.2"))[0] != ka[0]  # another model: another key


def test_evaluate_overrides_are_the_declared_evaluation_options():
    accepted = [k for k in ("adapter.inference", "adapter.mc_samples", "ood_task", "calibration", "results_csv",
                            "force", "data.dir", "data.cache_dir", "data.source", "runtime.threads") if
                identity.accepts_override(k)]
    assert len(accepted) == 10
    assert not any(identity.accepts_override(k) for k in ("adapter.r", "trainer.lr_head", "backbone.name", "seed"))
    over = identity.evaluation_overrides(cfg_of("adapter=pvera", "calibration=temperature"))
    assert over["calibration"] == "temperature" and over["adapter.inference"] == "mean" and "runtime.device" in over
    assert all(identity.accepts_override(k) for k in over)


# ---------------------------------------------------------------- end to end (issue 23's acceptance)
def last_row(path: Path) -> dict:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))[-1]


FAST = ("task=demo", "backbone=vit_tiny_random", "seed=1", "trainer.epochs=1", "trainer.batch_size=200",
        "runtime.progress=false", "runtime.device=cpu")


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ("recipe=pvera_paper_exact", "adapter=vera", GRID),
    ("recipe=pvera_paper_exact", "adapter=pvera", GRID),
    ("recipe=pvera_paper_exact", "adapter=dora", RANKS),  # the recipe's grid is over the rank: so is this one
    ("recipe=pvera_paper_exact", "adapter=lora", RANKS),
    ("recipe=noah", "adapter=lora", ANY_GRID),
    ("adapter=lora", "protocol=holdout", "backbone.head_draws=after_backbone",
     "++protocol.grid={trainer.lr_head:[1e-7,1e-2]}"),  # the second candidate wins: its head is the 2nd drawn
], ids=["vera-exact", "pvera-exact", "dora-exact", "lora-exact", "noah-head-init", "head-draws-after-backbone"])
def test_a_grid_run_is_re_evaluated_to_its_numbers_and_exported(cli, tmp_path, overrides):
    peft = pytest.importorskip("peft")
    p = cli(*FAST, *overrides, timeout=1500)
    assert p.returncode == 0, p.stderr[-2000:]
    row = last_row(tmp_path / "results" / "results.csv")
    run_dir = Path(row["run_dir"])
    p = cli("evaluate", str(run_dir), f"results_csv={tmp_path / 'again.csv'}", "runtime.progress=false")
    assert p.returncode == 0, p.stderr[-2000:]
    again = last_row(tmp_path / "again.csv")
    for k in ("test_acc", "test_nll", "test_ece", "test_brier", "train_key", "config_hash"):
        assert again[k] == row[k], k
    out = tmp_path / "exported"
    p = cli("export", str(run_dir), "--format", "peft", "--out", str(out))
    if "adapter=dora" in overrides and "recipe=pvera_paper_exact" in overrides:
        # the PVeRA code's DoRA (column norm, not detached, frozen magnitude) has no PEFT form: export
        # refuses it in one line, before building anything, and writes nothing
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and not out.exists(), p.stderr
        assert "dora with norm_axis=column has no PEFT form" in p.stderr
        return
    assert p.returncode == 0, p.stderr[-2000:]
    model, cfg = artifacts.load_run(run_dir)
    vit = ModelBuilder(cfg).backbone  # the run's own frozen backbone, before any adapter
    vit.reset_classifier(int(cfg.task.num_classes))
    pm = peft.PeftModel.from_pretrained(vit, str(out)).eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(pm(x), model.head(model.backbone(x)), rtol=0, atol=1e-5)
    if "after_backbone" in " ".join(overrides):
        assert json.loads(row["chosen"]) == {"trainer.lr_head": 0.01}


@pytest.mark.slow
def test_a_one_point_vtab_run_is_not_trained_again_for_the_other_checkpoint(cli, tmp_path):
    base = (*FAST, "adapter=pvera", "adapter.r=4", "protocol=vtab", "adapter.inference=mc", "adapter.mc_samples=2")
    p = cli(*base, "protocol.checkpoint=best")
    assert p.returncode == 0, p.stderr[-2000:]
    p = cli(*base, "protocol.checkpoint=last")
    assert p.returncode == 0, p.stderr[-2000:]
    said = p.stdout + p.stderr  # the log goes to stdout under Hydra
    assert "skipped:" in said and "already has an ok row" in said
    with open(tmp_path / "results" / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 1


def test_evaluate_writes_only_where_the_user_says(tmp_path, monkeypatch, capsys):
    """A crafted run directory whose weight file names another CSV (here a harmless target under
    tmp_path): evaluate appends to results/results.csv under the working directory, or to the
    results_csv the user gives, and writes nothing at the named path."""
    from pvera_bench.evaluate import main as evaluate_main

    cfg = cfg_of("adapter=lora", "adapter.r=2")
    target = tmp_path / "elsewhere" / "victim.csv"
    config = dict(OmegaConf.to_container(cfg, resolve=True), results_csv=str(target))
    run = tmp_path / "run"
    run.mkdir()
    artifacts.save(run, ModelBuilder(cfg)(0), config, candidate=0, chosen={}, train_key={}, config_hash="h",
                   versions="{}")
    monkeypatch.chdir(tmp_path)
    assert evaluate_main([str(run), "runtime.progress=false"]) == 0
    assert evaluate_main([str(run), "runtime.progress=false", "results_csv=mine.csv"]) == 0
    assert not target.parent.exists()
    with open(tmp_path / "results" / "results.csv", newline="") as f, open(tmp_path / "mine.csv", newline="") as g:
        assert len(list(csv.DictReader(f))) == len(list(csv.DictReader(g))) == 1


@pytest.mark.parametrize("damage", ["config.yaml", "record.json"])
def test_a_damaged_run_is_one_line_before_any_run_is_evaluated(tmp_path, monkeypatch, capsys, damage):
    from pvera_bench.evaluate import main as evaluate_main

    cfg = cfg_of("adapter=lora", "adapter.r=2")
    config = OmegaConf.to_container(cfg, resolve=True)
    good, bad = tmp_path / "good", tmp_path / "bad"
    for d in (good, bad):
        d.mkdir()
        artifacts.save(d, ModelBuilder(cfg)(0), config, candidate=0, chosen={}, train_key={}, config_hash="h",
                       versions="{}")
        OmegaConf.save(cfg, d / "config.yaml", resolve=True)
        (d / "record.json").write_text(json.dumps({"protocol": "vtab"}))
    (bad / damage).write_text("{protocol: [" if damage == "config.yaml" else '{"protocol": "vt')
    monkeypatch.chdir(tmp_path)
    assert evaluate_main([str(good), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad / damage} is damaged" in err
    assert not (tmp_path / "results").exists() and not (good / "evaluations").exists()


@pytest.mark.parametrize("override, says", [
    ("runtime.device=gpu", "runtime.device='gpu' is invalid"),
    ("runtime.threads=abc", "runtime.threads='abc' is invalid"),
    ("runtime.eval_batch_size=0", "runtime.eval_batch_size=0 is invalid"),
    ("runtime.nonsense=1", "is not a runtime option"),
    ("data.source=bogus", "data.source='bogus' is invalid"),
    ("ood_task=[", "cannot read the value"),
    ("results_csv=.", "is a directory"),
])
def test_evaluate_checks_override_values_with_the_training_schema(tmp_path, monkeypatch, capsys, override, says):
    from pvera_bench.evaluate import main as evaluate_main

    cfg = cfg_of("adapter=lora", "adapter.r=2")
    run = tmp_path / "run"
    run.mkdir()
    artifacts.save(run, ModelBuilder(cfg)(0), OmegaConf.to_container(cfg, resolve=True), candidate=0, chosen={},
                   train_key={}, config_hash="h", versions="{}")
    monkeypatch.chdir(tmp_path)
    assert evaluate_main([str(run), override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
    assert not (tmp_path / "results").exists()


def test_a_foreign_weight_file_of_the_same_adapter_is_refused(tmp_path):
    """LoRA q/k/v weights copied into a LoRA q/v run directory: same adapter, backbone, task and
    seed, another training setting: refused in one line, not evaluated."""
    qkv, qv = cfg_of("adapter=lora", "adapter.r=2", "adapter.targets=qkv"), cfg_of("adapter=lora", "adapter.r=2")
    run = tmp_path / "run"
    run.mkdir()
    artifacts.save(run, ModelBuilder(qkv)(0), OmegaConf.to_container(qkv, resolve=True), candidate=0, chosen={},
                   train_key={}, config_hash="h", versions="{}")
    OmegaConf.save(qv, run / "config.yaml", resolve=True)
    with pytest.raises(artifacts.ArtifactError, match=r"other adapter options .*adapter.targets: 'qkv' vs 'qv'"):
        artifacts.load_run(run)
    OmegaConf.save(qkv, run / "config.yaml", resolve=True)
    artifacts.load_run(run)  # its own directory: loads


def test_every_option_of_every_config_group_has_one_help_line():
    from dataclasses import fields

    from pvera_bench import schema

    helps = {f"{g}.{f.name}": f.metadata["rule"].help for g, group in schema.GROUPS.items() for f in fields(group)}
    assert len(helps) == 21 + 14 + 5 + 15 + 8  # trainer 21 (schedule_offset, cooldown_epochs), protocol, data, backbone, runtime
    assert all(h and "\n" not in h and len(h) <= 110 for h in helps.values()), [k for k, h in helps.items() if not h]
