"""Recipes (configs/recipe/, configs/recipe_adapter/): what each resolves to, composed by Hydra
exactly as the command line composes them; and every adapter YAML equals its apply() defaults."""

import inspect

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pvera_bench import adapters, registry
from pvera_bench.cli import group_options
from pvera_bench.paths import config_dir

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(scope="module", autouse=True)
def hydra_configs():
    """Hydra initialised once for the module (composing is then a few ms)."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        yield


def job(*overrides: str) -> dict:
    """The resolved job config, as ``pvera-bench ... --cfg job`` prints it."""
    return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)


def test_recipe_group_holds_the_five_recipes():
    assert group_options("recipe") == ["default", "noah", "pvera_paper", "pvera_paper_exact", "vpetl"]


def test_noah_lora_resolves_to_noahs_recipe():
    c = job("recipe=noah", "adapter=lora", "task=cifar100")
    t = c["trainer"]
    assert (t["epochs"], t["batch_size"]) == (100, 64)
    assert t["lr_adapter"] == t["lr_head"] == 1e-3 and t["wd_adapter"] == t["wd_head"] == 1e-4
    assert (t["warmup_epochs"], t["warmup_lr"], t["min_lr"]) == (10, 1e-6, 1e-5)
    assert (t["schedule"], t["schedule_unit"], t["precision"]) == ("cosine", "epoch", "fp32")
    assert t["label_smoothing"] == 0.0 and t["softmax_before_loss"] is False
    b = c["backbone"]
    assert b["name"] == "vit_b16" and b["drop_path_rate"] == 0.1
    assert (b["mean"], b["std"]) == (IMAGENET_MEAN, IMAGENET_STD)
    assert (c["data"]["resize"], c["data"]["source"]) == ("bicubic", "folder")
    a = c["adapter"]
    assert (a["targets"], a["r"], a["dropout"]) == ("qkv", 8, 0.1)
    assert (a["alpha"], a["fused"], a["init"]) == (8.0, True, "noah_code")  # timm 0.5.4's sampler (issue 25)
    p = c["protocol"]
    assert p["name"] == "vtab" and p["final_on"] == "train800val200" and p["grid"] == {}
    assert p["test_eval_every"] == 10
    assert c["recipe"]["name"] == "noah"


def test_pvera_paper_pvera_resolves_to_the_papers_recipe():
    c = job("recipe=pvera_paper", "adapter=pvera", "task=cifar100")
    assert c["backbone"]["name"] == "dinov2_vitb14" and c["backbone"]["drop_path_rate"] == 0.0
    assert (c["backbone"]["mean"], c["backbone"]["std"]) == (IMAGENET_MEAN, IMAGENET_STD)
    t = c["trainer"]
    assert (t["batch_size"], t["shuffle"], t["lr_head"], t["epochs"]) == (16, False, 1e-4, 500)
    assert (t["schedule"], t["precision"], t["warmup_epochs"]) == ("constant", "fp32", 0)
    assert t["wd_head"] == t["wd_adapter"] == 1e-4 and t["softmax_before_loss"] is False
    assert (c["data"]["resize"], c["data"]["source"]) == ("bilinear", "folder")
    a = c["adapter"]
    assert (a["r"], a["alpha"], a["init"], a["projection_seed"], a["lambda_d_init"]) == (256, 16.0, "pvera_code",
                                                                                        None, None)
    assert a["beta"] == 1e6  # the task table's beta for cifar100
    p = c["protocol"]
    assert (p["name"], p["metric"], p["patience"], p["min_rel_delta"]) == ("pvera_paper", "loss", 20, 0.001)
    assert p["final_on"] is None and p["select_on"] == "train800" and p["checkpoint"] == "best"
    assert p["grid_mode"] == "joint"  # the candidates train in lockstep, as in the paper's code
    assert p["grid"] == {"trainer.lr_adapter": [1e-3, 1e-4, 1e-5]}
    assert c["recipe"]["name"] == "pvera_paper"


@pytest.mark.parametrize("adapter", ["lora", "dora"])
def test_pvera_paper_rank_grid(adapter):
    c = job("recipe=pvera_paper", f"adapter={adapter}", "task=cifar100")
    assert c["protocol"]["grid"] == {"adapter.r": [32, 64, 128]}
    assert c["adapter"]["alpha"] == 16.0 and c["trainer"]["lr_adapter"] == 1e-4
    if adapter == "lora":
        a = c["adapter"]
        assert (a["targets"], a["dropout"], a["fused"], a["init"]) == ("qv", 0.0, False, "pvera_code")


@pytest.mark.parametrize("adapter", ["adaptformer", "bottleneck"])
def test_pvera_paper_reduction_grid(adapter):
    c = job("recipe=pvera_paper", f"adapter={adapter}", "task=cifar100")
    a = c["adapter"]
    assert c["protocol"]["grid"] == {"adapter.reduction": [4, 8, 16]}
    assert a["width"] is None and a["activation"] == "relu" and a["init"] == "pytorch"
    if adapter == "adaptformer":
        assert a["learnable_scale"] is True and a["scale"] == 1.0
    else:
        assert a["placement"] == "attn_mlp"


@pytest.mark.parametrize("adapter", ["ia3", "linear_probe"])
def test_pvera_paper_without_a_grid(adapter):
    assert job("recipe=pvera_paper", f"adapter={adapter}", "task=cifar100")["protocol"]["grid"] == {}


def test_pvera_paper_exact_adds_only_the_double_softmax_and_the_codes_draws():
    exact = job("recipe=pvera_paper_exact", "adapter=lora", "task=cifar100")
    paper = job("recipe=pvera_paper", "adapter=lora", "task=cifar100")
    assert exact["trainer"]["softmax_before_loss"] is True and exact["recipe"]["name"] == "pvera_paper_exact"
    assert exact["adapter"].pop("draws") == "pvera_code" and paper["adapter"].pop("draws") == "run"
    assert exact["backbone"].pop("head_draws") == "after_backbone" and paper["backbone"].pop("head_draws") == "run"
    exact["trainer"]["softmax_before_loss"] = False
    exact["recipe"]["name"] = "pvera_paper"
    assert exact == paper  # the per-adapter settings (rank grid) included


def test_noah_bottleneck_is_noahs_adapter():
    a = job("recipe=noah", "adapter=bottleneck", "task=cifar100")["adapter"]
    assert (a["width"], a["placement"], a["activation"], a["dropout"], a["init"]) == (
        8, "mlp_after_drop_path", "quick_gelu", 0.1, "noah_code")  # NOAH's own draws, in its order (issue 25)


@pytest.mark.parametrize("adapter", ["pvera", "vera", "adaptformer", "dora", "ia3"])
def test_default_and_noah_keep_the_standard_forms(adapter):
    """Outside its per-adapter files, a recipe leaves the adapter as configs/adapter/ has it."""
    plain = job(f"adapter={adapter}", "task=cifar100", "recipe=default")["adapter"]
    assert job(f"adapter={adapter}", "task=cifar100", "recipe=noah")["adapter"] == plain
    raw = OmegaConf.to_container(compose("config", overrides=[f"adapter={adapter}", "task=cifar100"]).adapter)
    assert {k: v for k, v in plain.items() if k != "beta"} == {k: v for k, v in raw.items() if k != "beta"}


def test_default_recipe_is_noahs_trainer_and_preprocessing():
    d, n = job("task=cifar100"), job("task=cifar100", "recipe=noah")
    assert d["recipe"]["name"] == "default" and d["trainer"] == n["trainer"]
    assert (d["backbone"].pop("head_init"), n["backbone"].pop("head_init")) == ("pytorch", "noah_code")
    assert d["backbone"] == n["backbone"] and d["data"]["resize"] == "bicubic"
    assert d["protocol"]["name"] == "vtab" and d["protocol"].get("test_eval_every", 0) == 0


def test_command_line_values_win_over_the_recipe():
    c = job("recipe=pvera_paper", "adapter=lora", "task=cifar100", "trainer.epochs=7", "backbone=vit_b16",
            "adapter.alpha=4", "data.resize=bicubic", "protocol.patience=3")
    assert c["trainer"]["epochs"] == 7 and c["backbone"]["name"] == "vit_b16" and c["adapter"]["alpha"] == 4
    assert c["data"]["resize"] == "bicubic" and c["protocol"]["patience"] == 3
    assert c["trainer"]["batch_size"] == 16  # the rest of the recipe stays


def test_demo_experiment_keeps_its_settings():
    c = job("experiment=demo", "adapter=lora")
    assert c["backbone"]["name"] == "vit_tiny_pretrained" and c["task"]["name"] == "demo"
    assert c["protocol"]["name"] == "holdout"
    assert (c["trainer"]["epochs"], c["trainer"]["batch_size"], c["trainer"]["warmup_epochs"]) == (25, 32, 1)


@pytest.mark.parametrize("recipe", ["default", "noah", "pvera_paper", "pvera_paper_exact", "vpetl"])
@pytest.mark.parametrize("adapter", adapters.available())
def test_every_recipe_and_adapter_composes_with_valid_options(recipe, adapter):
    """Every combination resolves, and its adapter options are accepted by apply()'s signature."""
    c = job(f"recipe={recipe}", f"adapter={adapter}", "task=cifar100")
    opts = {k: v for k, v in c["adapter"].items() if k != "name"}
    inspect.signature(adapters.get(adapter)).bind(None, **{**registry.defaults(adapter), **opts})
    for key in c["protocol"]["grid"]:
        section, _, name = key.partition(".")
        assert name in c[section], key


@pytest.mark.parametrize("adapter", adapters.available())
def test_adapter_yaml_defaults_equal_declared_defaults(adapter):
    """One source of truth: configs/adapter/<name>.yaml holds exactly the declared options (the
    keyword arguments of apply()), with the same default values (beta comes from the task table)."""
    raw = OmegaConf.to_container(OmegaConf.load(config_dir() / "adapter" / f"{adapter}.yaml"), resolve=False)
    raw.pop("name")
    declared = registry.defaults(adapter)
    assert set(raw) == set(declared) == set(list(inspect.signature(adapters.get(adapter)).parameters)[1:])
    for k, v in raw.items():
        if isinstance(v, str) and v.startswith("${"):
            continue
        assert v == declared[k] and type(v) is type(declared[k]), (k, v, declared[k])


def test_every_recipe_with_per_adapter_files_covers_the_same_adapters():
    base = config_dir() / "recipe_adapter"
    assert sorted(p.name for p in base.iterdir() if p.is_dir()) == ["noah", "pvera_paper", "pvera_paper_exact", "vpetl"]
    assert sorted(p.stem for p in (base / "pvera_paper_exact").glob("*.yaml")) == \
        sorted(p.stem for p in (base / "pvera_paper").glob("*.yaml"))
    for p in base.glob("*/*.yaml"):
        assert p.stem in adapters.available(), p


FAST = ["backbone=vit_tiny_random", "task=demo", "protocol=holdout", "trainer.epochs=1", "runtime.progress=false"]


@pytest.mark.parametrize("args, says", [
    (["adapter=lora", "adapter.targets=qk"], "adapter.targets='qk' is invalid for adapter lora: allowed one of qv, qkv"),
    (["adapter=pvera", "adapter.init=paper"], "adapter.init='paper' is invalid for adapter pvera: allowed one of pvera_code, peft"),
    (["adapter=lora", "data.resize=area"], "data.resize='area' is invalid: allowed one of bilinear_antialias, bicubic, bilinear"),
    (["adapter=lora", "backbone.std=[1,0,1]"], "backbone.std=[1, 0, 1] is invalid: allowed a list of 3 numbers > 0 or null"),
])
def test_bad_recipe_options_end_with_one_clear_line(cli, args, says):
    p = cli(*FAST, *args)
    assert p.returncode == 2, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("pvera-bench: error: ") and says in last and "Traceback" not in p.stderr


def test_resize_is_part_of_the_resume_key():
    from pvera_bench.identity import config_hash

    base = ["task=demo", "data.resize=bilinear_antialias"]
    a = config_hash(compose("config", overrides=base))
    b = config_hash(compose("config", overrides=["task=demo", "data.resize=bicubic"]))
    c = config_hash(compose("config", overrides=["task=demo", "data.resize=bilinear"]))
    assert len({a, b, c}) == 3


@pytest.mark.parametrize("recipe,value", [("noah", True), ("default", True), ("pvera_paper", False),
                                          ("pvera_paper_exact", False), ("vpetl", False)])
def test_last_batch_and_bias_decay_follow_the_source(recipe, value):
    # NOAH: DataLoader(drop_last=True) and timm's create_optimizer (no decay on biases, 1-D tensors);
    # the PVeRA code: neither
    t = job(f"recipe={recipe}", "adapter=lora", "task=cifar100")["trainer"]
    assert (t["drop_last"], t["wd_skip_1d"]) == (value, value)


def test_pvera_paper_exact_dora_is_the_codes_dora():
    """leofillioux/pvera models/adapters/dora.py: column norm, not detached, frozen magnitude, no alpha,
    A randn / sqrt(r); recipe=pvera_paper keeps PEFT's form but the code's scale (1)."""
    a = job("recipe=pvera_paper_exact", "adapter=dora", "task=dtd")["adapter"]
    assert (a["norm_axis"], a["detach_norm"], a["train_magnitude"], a["scaling"], a["init"]) == (
        "column", False, False, "one", "pvera_code")
    p = job("recipe=pvera_paper", "adapter=dora", "task=dtd")["adapter"]
    assert (p["norm_axis"], p["detach_norm"], p["train_magnitude"], p["scaling"], p["init"]) == (
        "row", True, True, "one", "peft")


@pytest.mark.parametrize("recipe,pos_embed", [("pvera_paper", "dinov2_hub"), ("pvera_paper_exact", "dinov2_hub"),
                                              ("noah", "timm"), ("default", "timm")])
def test_pvera_paper_recipes_resample_position_embeddings_as_the_hub(recipe, pos_embed):
    assert job(f"recipe={recipe}", "adapter=lora", "task=dtd")["backbone"]["pos_embed"] == pos_embed
