"""Which trained tensors get weight decay under ``trainer.wd_skip_1d`` (recipe=noah): the logical
vectors each adapter declares (``AdapterLayer.vector_params``) and biases get none, every matrix gets
the recipe's. Checked against timm 0.5.4's rule (NOAH's ``create_optimizer``:
``ndim <= 1 or name.endswith(".bias")``) applied to the SAME method built one layer per projection,
as PEFT builds it (VeRA, DoRA, LoRA) or the PVeRA code does (IA3: PEFT stores IA3's k/v scales as
(d, 1) matrices, which that rule would decay; the IA3 paper and the PVeRA code,
leofillioux/pvera models/adapters/ia3.py, have one vector ``torch.ones(in_dim)`` per projection)."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from pvera_bench import adapters
from pvera_bench.backbones import Classifier
from pvera_bench.paths import config_dir
from pvera_bench.train import Trainer

from conftest import tiny_vit

D, DEPTH, CLASSES = 32, 2, 3


@pytest.fixture(scope="module")
def noah_trainer() -> dict:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["recipe=noah", "adapter=vera", "task=dtd"])
    return OmegaConf.to_container(cfg.trainer, resolve=True)


def timm_054_no_decay(name: str, p: torch.Tensor) -> bool:
    """timm 0.5.4 optim_factory.add_weight_decay: ``len(param.shape) == 1 or name.endswith(".bias")``."""
    return len(p.shape) == 1 or name.endswith(".bias")


def ours(name: str, options: dict, trainer_cfg: dict) -> dict[str, float]:
    """Our weight decay per role (the last part of the parameter's name), one value per role."""
    torch.manual_seed(0)
    bb = tiny_vit(embed_dim=D, depth=DEPTH)
    adapters.apply(bb, name, **options)
    t = Trainer(Classifier(bb, CLASSES), trainer_cfg, torch.device("cpu"))
    wd_of = {id(p): g["weight_decay"] for g in t._optimizer().param_groups for p in g["params"]}
    roles: dict[str, set[float]] = {}
    for n, p in t.model.named_parameters():
        if p.requires_grad:
            role = "head." + n.split(".")[-1] if n.startswith("head.") else n.split(".")[-1]
            roles.setdefault(role, set()).add(wd_of[id(p)])
    assert all(len(v) == 1 for v in roles.values()), roles
    return {k: v.pop() for k, v in roles.items()}


class ToyBlock(nn.Module):
    """One block with separate q, k, v and fc2 layers, as PEFT adapts them one Linear at a time."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(D, D) for _ in range(3))
        self.fc2 = nn.Linear(4 * D, D)


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ToyBlock() for _ in range(DEPTH))
        self.head = nn.Linear(D, CLASSES)


PEFT_ROLES = {"vera_lambda_b": "lambda_b", "vera_lambda_d": "lambda_d", "lora_A": "lora_A", "lora_B": "lora_B",
              "lora_magnitude_vector": "magnitude"}


def by_timm_rule(named, role_of, wd: float) -> dict[str, float]:
    roles: dict[str, set[float]] = {}
    for n, p in named:
        if p.requires_grad:
            roles.setdefault(role_of(n), set()).add(0.0 if timm_054_no_decay(n, p) else wd)
    assert all(len(v) == 1 for v in roles.values()), roles
    return {k: v.pop() for k, v in roles.items()}


def peft_reference(config) -> dict[str, float]:
    from peft import get_peft_model

    model = get_peft_model(Toy(), config)
    for p in model.base_model.model.head.parameters():
        p.requires_grad_(True)

    def role_of(n: str) -> str:
        if ".head." in n or n.startswith("head."):
            return "head." + n.split(".")[-1]
        return next(r for key, r in PEFT_ROLES.items() if f".{key}." in n + ".")

    return by_timm_rule(model.named_parameters(), role_of, 1e-4)


def pvera_code_ia3_reference() -> dict[str, float]:
    """The PVeRA code's IA3 layers (models/adapters/ia3.py): one (d,) vector per projection and block."""
    named = []
    for i in range(DEPTH):
        named += [(f"blocks.{i}.attn.qkv.adapter_lk", nn.Parameter(torch.ones(D))),
                  (f"blocks.{i}.attn.qkv.adapter_lv", nn.Parameter(torch.ones(D))),
                  (f"blocks.{i}.mlp.act.adapter_lff", nn.Parameter(torch.ones(4 * D)))]
    head = nn.Linear(D, CLASSES)
    named += [("head.weight", head.weight), ("head.bias", head.bias)]
    role = {"adapter_lk": "scale_kv", "adapter_lv": "scale_kv", "adapter_lff": "scale_ff"}
    return by_timm_rule(named, lambda n: "head." + n.split(".")[-1] if n.startswith("head.") else role[n.split(".")[-1]],
                        1e-4)


def test_noah_recipe_exempts_every_vector_and_decays_every_matrix(noah_trainer):
    assert noah_trainer["wd_skip_1d"] is True and noah_trainer["wd_adapter"] == noah_trainer["wd_head"] == 1e-4
    expected = {
        "vera": {"lambda_d": 0.0, "lambda_b": 0.0},
        "pvera": {"lambda_d": 0.0, "lambda_b": 0.0},
        "ia3": {"scale_kv": 0.0, "scale_ff": 0.0},
        "dora": {"magnitude": 0.0, "lora_A": 1e-4, "lora_B": 1e-4},
    }
    for name, roles in expected.items():
        got = ours(name, {"r": 4} if name in ("vera", "pvera", "dora") else {}, noah_trainer)
        assert got == {**roles, "head.weight": 1e-4, "head.bias": 0.0}, name
    # the packed (2, d) tensors are the ones a storage rule got wrong
    torch.manual_seed(0)
    bb = adapters.apply(tiny_vit(embed_dim=D, depth=DEPTH), "ia3")
    assert bb.blocks[0].attn.qkv.scale_kv.ndim == 2


def test_groups_equal_timm_054_rule_on_peft_layers(noah_trainer):
    from peft import LoraConfig, VeraConfig

    vera = peft_reference(VeraConfig(r=4, target_modules=["q", "v"]))
    assert set(vera) == {"lambda_b", "lambda_d", "head.weight", "head.bias"}
    assert ours("vera", {"r": 4}, noah_trainer) == vera
    assert ours("pvera", {"r": 4}, noah_trainer) == vera  # PVeRA's tensors have VeRA's roles
    dora = peft_reference(LoraConfig(r=4, target_modules=["q", "v"], use_dora=True))
    assert set(dora) == {"lora_A", "lora_B", "magnitude", "head.weight", "head.bias"}
    assert ours("dora", {"r": 4}, noah_trainer) == dora
    lora = peft_reference(LoraConfig(r=4, target_modules=["q", "v"]))
    assert ours("lora", {"r": 4}, noah_trainer) == lora


def test_groups_equal_timm_054_rule_on_the_pvera_codes_ia3(noah_trainer):
    assert ours("ia3", {}, noah_trainer) == pvera_code_ia3_reference()


def test_bottleneck_biases_are_exempt_by_module_type(noah_trainer):
    got = ours("bottleneck", {"width": 4}, noah_trainer)
    assert got == {"weight": 1e-4, "bias": 0.0, "head.weight": 1e-4, "head.bias": 0.0}
