"""Every option validated before anything loads: schemas from the adapters' declarations and dataclasses."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pvera_bench import adapters, registry, schema
from pvera_bench.registry import Adapter, option
from pvera_bench.cli import group_options
from pvera_bench.paths import config_dir
from pvera_bench.schema import ConfigError, validate


def cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=["task=demo", "backbone=vit_tiny_random", *overrides])


def error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as e:
        validate(cfg(*overrides))
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("group", ["adapter", "backbone", "protocol", "trainer", "data", "experiment", "runtime", "recipe"])
def test_every_shipped_config_is_valid(group):
    task = ["task=dtd"] if group == "recipe" else []  # recipe=vpetl's per-task table has the 19 VTAB tasks only
    for option in group_options(group):
        validate(cfg(f"{group}={option}", *task))


@pytest.mark.parametrize("overrides,expect", [
    (["adapter=lora", "adapter.r=-3"], ["adapter.r=-3", "integer >= 1"]),
    (["adapter=pvera", "adapter.inference=bogus"], ["adapter.inference='bogus'", "mean, fixed, mc"]),
    (["adapter=pvera", "adapter.mc_samples=0"], ["adapter.mc_samples=0", ">= 1"]),
    (["adapter=adaptformer", "adapter.width=0"], ["adapter.width=0", ">= 1"]),
    (["adapter=lora", "adapter.alpha=abc"], ["adapter.alpha='abc'", "a number"]),
    (["adapter=lora", "+adapter.rank=3"], ["adapter.rank=3", "no option 'rank'", "r, alpha"]),
    (["adapter=ia3", "+adapter.r=3"], ["adapter.r=3", "options: none"]),
    (["trainer.lr_adapter=-1"], ["trainer.lr_adapter=-1", "> 0"]),
    (["trainer.lr_head=0"], ["trainer.lr_head=0", "> 0"]),
    (["trainer.epochs=0"], ["trainer.epochs=0", "integer >= 1"]),
    (["trainer.batch_size=2.5"], ["trainer.batch_size=2.5", "integer"]),
    (["trainer.precision=fp16"], ["trainer.precision='fp16'", "auto, bf16, fp32"]),
    (["++trainer.schedule_unit=epochs"], ["trainer.schedule_unit='epochs'", "epoch, step"]),
    (["++trainer.label_smoothing=-0.1"], ["trainer.label_smoothing=-0.1", ">= 0"]),
    (["+trainer.lr=1"], ["trainer.lr=1", "not a trainer option", "lr_adapter"]),
    (["++data.resize=nearest"], ["data.resize='nearest'", "bilinear_antialias, bicubic, bilinear"]),
    (["data.source=s3"], ["data.source='s3'", "folder", "tfds"]),
    (["++backbone.drop_path_rate=1.5"], ["backbone.drop_path_rate=1.5", "< 1"]),
    (["++backbone.mean=[0.5,0.5]"], ["backbone.mean=[0.5, 0.5]", "list of 3"]),
    (["protocol.metric=f1"], ["protocol.metric='f1'", "acc, loss"]),
    (["protocol.patience=0"], ["protocol.patience=0", ">= 1 or null"]),
    (["++protocol.test_eval_every=-1"], ["protocol.test_eval_every=-1", ">= 0"]),
    (["protocol.select_on=train"], ["protocol.select_on='train'", "train800, val200"]),
])
def test_bad_values_name_the_key_the_value_and_what_is_allowed(overrides, expect):
    msg = error(*overrides)
    assert all(e in msg for e in expect), msg


def test_contract_keys_are_accepted_before_their_code_lands():
    validate(cfg("adapter=lora", "++trainer.warmup_lr=1e-6", "++trainer.min_lr=1e-5", "++trainer.schedule_unit=step",
                 "++trainer.label_smoothing=0.1", "++trainer.softmax_before_loss=true", "++protocol.test_eval_every=5",
                 "++backbone.drop_path_rate=0.1", "++backbone.mean=[0.5,0.5,0.5]", "++backbone.std=null",
                 "++data.resize=bicubic"))


@pytest.mark.parametrize("grid,expect", [
    ("{trainer.lr_adapter:[]}", ["protocol.grid.trainer.lr_adapter=[]", "non-empty list"]),
    ("{trainer.lr:[1e-3]}", ["protocol.grid.trainer.lr", "not a key of this config"]),
    ("{adapter.rank:[4,8]}", ["protocol.grid.adapter.rank", "not a key"]),
    ("{adapter.r:[8,-3]}", ["protocol.grid.adapter.r value -3", "adapter.r=-3", ">= 1"]),
    ("{trainer.epochs:[0]}", ["value 0", "trainer.epochs=0"]),
])
def test_bad_grids(grid, expect):
    msg = error("adapter=lora", f"++protocol.grid={grid}")
    assert all(e in msg for e in expect), msg


def test_a_grid_over_a_setting_the_adapter_ignores():
    msg = error("adapter=linear_probe", "++protocol.grid={trainer.lr_adapter:[1e-3,1e-4]}")
    assert "linear_probe has no trainable adapter tensors" in msg and "trainer.lr_adapter" in msg
    validate(cfg("adapter=linear_probe", "++protocol.grid={trainer.lr_head:[1e-3,1e-4]}"))
    validate(cfg("adapter=ia3", "++protocol.grid={trainer.lr_adapter:[1e-3,1e-4]}"))  # ia3 has no options but trains
    for name in adapters.available():  # the declared `trains` agrees with a probe on a tiny ViT
        assert schema.adapter_trains(name) == _trains_on_a_probe(name) == (name != "linear_probe")


def _trains_on_a_probe(name: str) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=8, patch_size=8, embed_dim=8, depth=1, num_heads=1, num_classes=0)
    return adapters.count_trainable(adapters.apply(vit, name, **({"width": 2} if "width" in registry.options(name)
                                                                  else {}))) > 0


@pytest.mark.parametrize("name", adapters.available())
def test_adapter_yaml_matches_its_declaration(name):
    """One source of truth: configs/adapter/<name>.yaml holds exactly the declared options, and a
    literal value equals the declared default (interpolations such as pvera's beta excepted); the
    apply function takes exactly the declared options."""
    import inspect

    raw = OmegaConf.load(config_dir() / "adapter" / f"{name}.yaml")
    declared = registry.options(name)
    for key in raw:
        if key == "name":
            continue
        assert key in declared, f"{name}.yaml sets {key}, which {name} does not declare"
        node = raw._get_node(key)
        if not OmegaConf.is_interpolation(raw, key):
            assert node._value() == declared[key].default, f"{name}.yaml {key}={node._value()} but declared " \
                                                           f"{declared[key].default}"
    assert set(declared) <= set(raw) - {"name"}, f"{name}.yaml lacks options {set(declared) - set(raw)}"
    assert list(inspect.signature(adapters.get(name)).parameters)[1:] == list(declared)
    assert all(o.help and "\n" not in o.help for o in declared.values()), name  # the docs reference is made from them


@dataclasses.dataclass(frozen=True)
class _Made:
    width: int = option(4, ge=1, help="w")
    mode: str = option("a", choices=("a", "b"), help="m")
    gain: float = option(0.5, help="g")
    tag: str | None = option(None, help="t")


def test_adapter_rules_follow_the_declaration(monkeypatch):
    monkeypatch.setattr(registry, "_ADAPTERS", dict(registry._ADAPTERS))
    registry.declare(Adapter("made", _Made, apply="tests:none", help="a test adapter"))
    sch = schema.adapter_rules("made")
    assert list(sch) == ["width", "mode", "gain", "tag"]
    assert sch["width"].ok(1) and not sch["width"].ok(0) and not sch["width"].ok(True)
    assert sch["mode"].choices == ("a", "b") and not sch["mode"].ok("c")
    assert sch["gain"].type is float and sch["gain"].ok(2) and not sch["gain"].ok("x")
    assert sch["tag"].ok(None) and sch["tag"].ok("x")
    assert registry.defaults("lora")["r"] == 8


def test_cli_exits_2_with_one_line_before_loading(cli, tmp_path):
    for bad in (["adapter=lora", "adapter.r=-3"], ["adapter=lora", "+adapter.rank=3"]):
        p = cli(*bad, "task=demo", "backbone=vit_tiny_random")
        assert p.returncode == 2, p.stderr
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("pvera-bench: error: adapter."), p.stderr
        assert "Traceback" not in p.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "checkpoints").exists()


def test_validation_reads_the_declarations_without_torch():
    code = ("import sys; from pvera_bench import registry, schema; "
            "schema.check_adapter({'name': 'pvera', 'inference': 'mc'}); "
            "print(len(registry.names()), dict(registry.options('pvera')['mc_samples'].used_when), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["12", "{'inference':", "('mc',)}", "False"]


def test_declared_choices_of_each_adapter_option_match_what_apply_accepts():
    """Validation reads string choices from the declarations; apply() checks them against its
    module's constants. The two lists must be one list."""
    from pvera_bench.adapters import base, bottleneck, dora, lora, pvera, qkv

    choices = {name: {k: set(r.choices) for k, r in schema.adapter_rules(name).items() if r.choices}
               for name in adapters.available()}
    draws = set(base.DRAWS)
    assert choices["lora"] == {"targets": set(lora.TARGETS), "init": set(lora.INITS), "draws": draws}
    assert choices["vera"] == {"init": set(qkv.PROJECTION_INITS), "draws": draws}
    assert choices["pvera"] == {"init": set(qkv.PROJECTION_INITS), "inference": set(pvera.INFERENCE_MODES),
                                "draws": draws}
    assert choices["dora"] == {"norm_axis": set(dora.NORM_AXES), "scaling": set(dora.SCALINGS),
                               "init": set(dora.INITS)}
    for name in ("bottleneck", "adaptformer"):
        assert choices[name]["activation"] == set(bottleneck.ACTIVATIONS), name
        assert choices[name]["init"] == set(bottleneck.INITS), name
    assert choices["bottleneck"]["placement"] == set(bottleneck.PLACEMENTS)


@pytest.mark.parametrize("overrides,expect", [
    (["runtime.device=gpu"], ["runtime.device='gpu'", "auto, cpu, cuda, cuda:N or mps"]),
    (["runtime.device=cuda:x"], ["runtime.device='cuda:x'", "cuda:N"]),
    (["runtime.eval_batch_size=0"], ["runtime.eval_batch_size=0", "integer >= 1"]),
    (["runtime.threads=0"], ["runtime.threads=0", ">= 1 or null"]),
    (["runtime.compile=yes"], ["runtime.compile='yes'", "true or false"]),
    (["runtime.checkpoint_every=-1"], ["runtime.checkpoint_every=-1", ">= 0"]),
    (["+runtime.devices=cpu"], ["runtime.devices='cpu'", "not a runtime option", "device"]),
    (["protocol=holdout", "protocol.checkpoint=last", "protocol.patience=5"],
     ["protocol.patience=5", "checkpoint='last'", "protocol.patience=null or protocol.checkpoint=best"]),
    (["trainer.warmup_epochs=2.5"], ["trainer.warmup_epochs=2.5", "whole number", "schedule_unit=step"]),
    (["protocol=holdout", "protocol.test_eval_every=2"], ["protocol.test_eval_every=2", "final_on is null"]),
    (["protocol.grid_mode=joint", "++protocol.grid={trainer.lr_head:[0.1,0.2]}"],
     ["grid_mode=joint", "protocol.checkpoint=best"]),
])
def test_runtime_and_combinations_are_refused_before_loading(overrides, expect):
    msg = error(*overrides)
    for part in expect:
        assert part in msg, msg


def test_valid_runtime_and_combinations_pass():
    for ok in (["runtime.device=cuda:1"], ["runtime.device=mps", "runtime.threads=4"], ["runtime.device=cpu"],
               ["trainer.warmup_epochs=2.5", "++trainer.schedule_unit=step"], ["trainer.warmup_epochs=2.0"],
               ["protocol=holdout", "protocol.patience=5"],  # checkpoint: best
               ["protocol.grid_mode=joint"]):  # one point: the grid mode is not read
        validate(cfg(*ok))


def test_cli_refuses_a_bad_device_in_one_line(cli, tmp_path):
    for bad in (["runtime.device=gpu"], ["trainer.precision=auto", "runtime.device=gpu"]):
        p = cli("adapter=lora", "task=demo", "backbone=vit_tiny_random", *bad)
        assert p.returncode == 2, p.stderr
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert lines == ["pvera-bench: error: runtime.device='gpu' is invalid: allowed auto, cpu, cuda, cuda:N or mps"]
    assert not (tmp_path / "results").exists()


@dataclasses.dataclass(frozen=True)
class _Needy:
    need: int = option(help="required")
    size: int | str = option(4, help="either")
    mode: str | int = option("a", choices=("a", "b", 7), help="a choice or a number")
    opt: float | None = option(None, help="nullable")


def test_option_reader_handles_unions_and_options_without_defaults(monkeypatch):
    monkeypatch.setattr(registry, "_ADAPTERS", dict(registry._ADAPTERS))
    registry.declare(Adapter("needy", _Needy, apply="tests:none", help="a test adapter"))
    sch = schema.adapter_rules("needy")
    size = sch["size"]
    assert size.ok(3) and size.ok("x") and not size.ok(None) and not size.ok(2.5) and not size.ok(True)
    assert size.allowed() == "an integer or a string"
    assert sch["mode"].ok("b") and sch["mode"].ok(7) and not sch["mode"].ok(None) and not sch["mode"].ok(8)
    need = sch["need"]
    assert need.required and not need.ok(None) and need.ok(3) and registry.options("needy")["need"].required
    assert sch["opt"].ok(None) and sch["opt"].ok(1.5) and not sch["opt"].required
    with pytest.raises(ConfigError, match="adapter.need is missing: adapter needy needs it"):
        schema.check_adapter({"name": "needy", "opt": 2.0})
    with pytest.raises(ConfigError, match="adapter.need=null is invalid"):
        schema.check_adapter({"name": "needy", "need": None})
    schema.check_adapter({"name": "needy", "need": 4})
    with pytest.raises(TypeError, match="annotate it with int, float, str, bool"):
        registry.declare(Adapter("badly", dataclasses.make_dataclass("B", [("x", list, option((), help="x"))]),
                                 apply="tests:none", help="h"))
