"""recipe=vpetl: V-PETL-Bench's per-task values (configs/recipe/vpetl.yaml, configs/recipe_adapter/vpetl/),
composed by Hydra as the command line composes them, against the values of its scripts and configs
(synbol/Parameter-Efficient-Transfer-Learning-Benchmark, ImageClassification/) written out here."""

import pytest
from hydra import compose
from omegaconf import OmegaConf

from pvera_bench import tasks
from pvera_bench.paths import config_dir
from pvera_bench.schema import ConfigError, validate

from test_recipes import hydra_configs, job  # noqa: F401  (hydra_configs: the module's autouse fixture)

AUG = "hflip+rand-m9-mstd0.5-inc1"

# (task, lr, wd, label smoothing, train_aug): run_vit_lora.sh lines 16-52; configs/model_lora/vtab/<task>.yaml
LORA = [("dtd", 0.0032, 0.04, 0.1, True), ("cifar100", 0.005, 0.005, 0.1, False),
        ("dsprites_loc", 0.003, 0.001, 0.0, False), ("clevr_count", 0.0033, 0.01, 0.0, True),
        ("kitti", 0.0072, 0.0001, 0.1, True), ("caltech101", 0.006, 0.35, 0.1, False)]


@pytest.mark.parametrize("task, lr, wd, smoothing, aug", LORA)
def test_lora_per_task_values(task, lr, wd, smoothing, aug):
    c = job("recipe=vpetl", "adapter=lora", f"task={task}")
    t = c["trainer"]
    assert t["lr_head"] == t["lr_adapter"] == lr and t["wd_head"] == t["wd_adapter"] == wd
    assert t["label_smoothing"] == smoothing
    assert t["augment"] == (AUG if aug else None)
    assert c["data"]["train_resize"] == ("bicubic" if aug else "bilinear") and c["data"]["resize"] == "bilinear"
    assert (t["drop_last"], t["wd_skip_1d"], t["epochs"], t["batch_size"]) == (False, False, 100, 64)
    p = c["protocol"]
    assert (p["test_eval_every"], p["test_eval_at"], p["test_eval_from"]) == (10, "end", 1)
    a = c["adapter"]
    assert (a["r"], a["alpha"], a["targets"], a["fused"], a["dropout"], a["init"]) == (8, 8.0, "qv", False, 0.0, "noah")
    assert c["recipe"]["name"] == "vpetl" and c["data"]["source"] == "folder"


def test_every_vpetl_table_has_exactly_the_19_tasks():
    vtab = set(tasks.expand("vtab"))
    assert len(vtab) == 19
    recipe = OmegaConf.load(config_dir() / "recipe" / "vpetl.yaml")
    assert set(recipe.per_task) == vtab
    assert sum(v.augment is not None for v in recipe.per_task.values()) == 12
    assert sum(v.label_smoothing == 0.1 for v in recipe.per_task.values()) == 12
    for f in (config_dir() / "recipe_adapter" / "vpetl").glob("*.yaml"):
        table = OmegaConf.load(f).get("per_task")
        if table is not None:
            assert set(table) == vtab, f.name
            assert all({"lr", "wd"} <= set(v) for v in table.values()), f.name  # ssf: its own extra settings


def test_a_task_outside_the_table_stops_with_one_line():
    cfg = compose("config", overrides=["recipe=vpetl", "adapter=lora", "task=demo"])
    with pytest.raises(ConfigError, match="recipe=vpetl sets per-task values .* task 'demo' is not one of them"):
        validate(cfg)


def test_command_line_wins_over_the_table():
    t = job("recipe=vpetl", "adapter=lora", "task=dtd", "trainer.lr_adapter=0.1", "trainer.augment=null")["trainer"]
    assert t["lr_adapter"] == 0.1 and t["lr_head"] == 0.0032 and t["augment"] is None


def test_adaptformer_adapter_and_linear_probing_forms():
    c = job("recipe=vpetl", "adapter=adaptformer", "task=cifar100")
    a = c["adapter"]
    assert (a["width"], a["scale"], a["learnable_scale"], a["activation"], a["init"], a["dropout"]) == \
        (8, 1.0, False, "relu", "noah", 0.1)
    assert a["norm_input"] is True and a["outside_drop_path"] is True and a["inside_layer_scale"] is False
    t = c["trainer"]
    assert (t["lr_adapter"], t["wd_adapter"], t["label_smoothing"], t["augment"]) == (0.01, 1.0, 0.1, None)  # line 16
    assert (c["protocol"]["test_eval_at"], c["protocol"]["test_eval_from"]) == ("end", 82)  # ep % 10 == 9 and ep > 80
    b = job("recipe=vpetl", "adapter=bottleneck", "task=smallnorb_ele")
    assert (b["adapter"]["width"], b["adapter"]["placement"], b["adapter"]["activation"], b["adapter"]["init"],
            b["adapter"]["dropout"]) == (8, "mlp", "gelu", "noah", 0.0)
    assert (b["trainer"]["lr_adapter"], b["trainer"]["wd_head"], b["protocol"]["test_eval_from"]) == (0.0011, 0.0005, 82)
    lp = job("recipe=vpetl", "adapter=linear_probe", "task=cifar100")
    assert (lp["trainer"]["lr_head"], lp["trainer"]["wd_head"], lp["protocol"]["test_eval_from"]) == (1e-3, 1e-4, 82)


@pytest.mark.slow
def test_a_vpetl_run_with_augmentation_completes(cli, tmp_path):
    """recipe=vpetl on the tiny ViT, task dtd (augmented in V-PETL-Bench) from a miniature folder tree:
    the run trains with hflip + RandAugment, the training split is cached bicubic and the test split
    bilinear, and the test split is scored at V-PETL-Bench's epochs (here every 2 from epoch 3: 4, 6)."""
    import json

    from helpers_data import make_folder_tree
    from pvera_bench import results

    root = make_folder_tree(tmp_path / "vtab-1k", "dtd", n_per_split=12, num_classes=47, size=40)
    p = cli("recipe=vpetl", "adapter=adaptformer", "task=dtd", f"data.dir={root}", "backbone=vit_tiny_random",
            "trainer.epochs=6", "trainer.batch_size=8", "protocol.test_eval_every=2", "protocol.test_eval_from=3",
            "runtime.progress=false", f"data.cache_dir={tmp_path / 'cache'}")  # its own cache: only this run's entries
    assert p.returncode == 0, p.stderr[-3000:]
    row = results.read(tmp_path / "results" / "results.csv")[-1]
    assert row["status"] == "ok" and row["recipe"] == "vpetl"
    trainer = json.loads(row["trainer"])
    assert trainer["augment"] == AUG and trainer["label_smoothing"] == 0.1 and trainer["lr_adapter"] == 0.0032
    history = (tmp_path / row["run_dir"] / "history.csv").read_text().splitlines()
    head = history[0].split(",")
    tested = [int(line.split(",")[head.index("epoch")]) for line in history[1:]
              if line.split(",")[head.index("test_acc")]]
    assert tested == [4, 6]
    resize = {}
    for m in (tmp_path / "cache").glob("dtd/*/manifest.json"):
        key = json.loads(m.read_text())["key"]
        resize[key["split"]] = key["resize"]
    assert resize == {"train800val200": "bicubic", "test": "bilinear"}


def test_test_epochs_follow_each_source():
    from pvera_bench.selection import test_epoch

    def epochs(at, first=1):
        return [e for e in range(1, 101) if test_epoch(e, 100, 10, at, first)]

    assert epochs("start") == [1, 11, 21, 31, 41, 51, 61, 71, 81, 91, 100]  # NOAH: 0-based ep % 10 == 0, and the last
    assert epochs("end") == list(range(10, 101, 10))                       # V-PETL-Bench LoRA: ep % 10 == 9
    assert epochs("end", 82) == [90, 100]                                  # its AdaptFormer: and ep > 80
    assert not test_epoch(5, 100, 0)


def test_a_bad_augment_spec_is_a_config_error():
    cfg = compose("config", overrides=["task=demo", "trainer.augment=hflip+vflip"])
    with pytest.raises(ConfigError, match=r"trainer.augment='hflip\+vflip': unknown part 'vflip'"):
        validate(cfg)
