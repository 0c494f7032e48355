"""recipe=noah's truncated normals drawn as NOAH's timm 0.5.4 draws them (pvera_bench/truncnormal.py).

The reference: timm 0.5.4's own ``timm.models.layers.trunc_normal_`` (pip install --no-deps --target DIR
timm==0.5.4, run with this torch, 2.14.1), torch.manual_seed(0), then four draws in this order into
empty float32 tensors; the SHA-256 of their bytes, their first values and the next three
torch.rand values (the RNG consumed) are written below as that run printed them."""

import hashlib

import torch
from torch import nn

from pvera_bench import adapters
from pvera_bench.backbones import Classifier
from pvera_bench.truncnormal import trunc_normal_timm054_

from conftest import tiny_vit
from test_recipes import hydra_configs, job  # noqa: F401  (hydra_configs: the module's autouse fixture)

DRAWS = [((47, 64), dict(std=.02)), ((8, 64), dict(std=.02)), ((64, 8), dict(std=.02)),
         ((5, 7), dict(mean=0.1, std=1.0, a=-1.0, b=0.5))]  # the last one truncated for real
TIMM054_SHA256 = "8f2468740b93bb3156840f457c34692bc85937276c67c695f9cd80d80ae07ca2"
TIMM054_FIRST = [-0.00018766950233839452, 0.04212036728858948, 0.04000982642173767, -0.5509530305862427]
TIMM054_NEXT_RAND = [0.0018253326416015625, 0.4524150490760803, 0.1374666690826416]


def draw(fn):
    torch.manual_seed(0)
    out = []
    for shape, kw in DRAWS:
        t = torch.empty(shape)
        fn(t, **kw)
        out.append(t)
    return out, torch.rand(3).tolist()


def digest(ts):
    return hashlib.sha256(b"".join(t.numpy().tobytes() for t in ts)).hexdigest()


def test_bit_identical_to_timm_054_and_the_same_rng_consumed():
    ts, nxt = draw(trunc_normal_timm054_)
    assert [float(t.flatten()[0]) for t in ts] == TIMM054_FIRST
    assert digest(ts) == TIMM054_SHA256 and nxt == TIMM054_NEXT_RAND
    assert float(ts[3].min()) >= -1.0 and float(ts[3].max()) <= 0.5


def test_torchs_sampler_draws_otherwise():  # what the other recipes keep: the test above can fail
    ts, nxt = draw(nn.init.trunc_normal_)
    assert digest(ts) != TIMM054_SHA256 and nxt != TIMM054_NEXT_RAND


def test_noah_code_lora_and_head_draw_with_it():
    torch.manual_seed(3)
    c = Classifier(tiny_vit(), 47, head_init="noah_code")
    torch.manual_seed(3)
    vit = tiny_vit()
    nn.Linear(vit.num_features, 47)  # the head's own construction draws, then NOAH's reset_classifier draw
    assert torch.equal(c.head.weight, trunc_normal_timm054_(torch.empty(47, vit.num_features), std=0.02))
    assert not c.head.bias.any()
    vit = tiny_vit()
    torch.manual_seed(5)
    adapters.apply(vit, "lora", r=4, targets="qkv", fused=True, init="noah_code")
    layer = next(adapters.adapter_layers(vit))
    torch.manual_seed(5)
    want = [trunc_normal_timm054_(torch.empty(32, 4), std=.02), trunc_normal_timm054_(torch.empty(3, 4, 32), std=.02)]
    assert torch.equal(layer.lora_A, want[0]) and torch.equal(layer.lora_B, want[1])


# NOAH's own model, built by its code: timm 0.5.4 first on sys.path, NOAH @ e9c55f3's
# model/supernet_vision_transformer_timm.py VisionTransformer(img_size=32, patch_size=8, embed_dim=32,
# depth=2, num_heads=2, num_classes=21843, super_prompt_tuning_dim=0, super_LoRA_dim=0, super_adapter_dim=4,
# super_prefix_dim=0) after torch.manual_seed(0), then reset_classifier(5) (supernet_train_prompt.py's
# order); the SHA-256 of blocks[0..1].adapter.ln1.weight, ln2.weight and head.weight, their first
# values and the next two torch.rand values, as that run printed them.
NOAH_SHA256 = "307eab0737cedeeaa6707dd78868400ddeb242b531c77f2e8c6f2e30319cd464"
NOAH_FIRST = [0.030583690851926804, -0.011165772564709187, -0.005218267906457186, 0.0010322666494175792,
              -0.005691254511475563]
NOAH_NEXT_RAND = [0.5384900569915771, 0.8909403681755066]


def test_noah_code_adapter_and_head_are_noahs_own_draws_in_noahs_order():
    vit = tiny_vit()  # the backbone: loaded weights in NOAH's runs, drawn nothing here
    torch.manual_seed(0)  # the run seeds before the adapter (run.execute), NOAH before building its model
    adapters.apply(vit, "bottleneck", width=4, placement="mlp_after_drop_path", init="noah_code", activation="quick_gelu")
    c = Classifier(vit, 5, head_init="noah_code")
    ada = [vit.blocks[b].drop_path2.adapter for b in range(2)]
    ts = [a.down.weight for a in ada] + [a.up.weight for a in ada] + [c.head.weight]
    assert [float(t.flatten()[0]) for t in ts] == NOAH_FIRST
    assert digest([t.detach() for t in ts]) == NOAH_SHA256 and torch.rand(2).tolist() == NOAH_NEXT_RAND
    assert not any(a.down.bias.any() or a.up.bias.any() for a in ada)


def test_noah_draws_differ():  # the test above can fail: torch's sampler block by block is another draw
    vit = tiny_vit()
    torch.manual_seed(0)
    adapters.apply(vit, "bottleneck", width=4, placement="mlp_after_drop_path", init="noah", activation="quick_gelu")
    assert float(vit.blocks[0].drop_path2.adapter.down.weight.flatten()[0]) != NOAH_FIRST[0]


def test_only_recipe_noah_draws_as_timm_054():
    c = job("recipe=noah", "adapter=bottleneck", "task=dtd")
    assert (c["backbone"]["head_init"], c["adapter"]["init"]) == ("noah_code", "noah_code")
    assert job("recipe=noah", "adapter=lora", "task=dtd")["adapter"]["init"] == "noah_code"
    for a in ("lora", "bottleneck", "adaptformer"):  # V-PETL keeps torch's sampler: its numbers do not move
        c = job("recipe=vpetl", f"adapter={a}", "task=dtd")
        assert (c["adapter"]["init"], c["backbone"]["head_init"]) == ("noah", "pytorch"), a
