"""The four baselines every VTAB-1k table has: full fine-tuning, BitFit, VPT and SSF.

Parameter counts by formula on the real ViT-B/16 shape (random weights, nothing downloaded),
each method against its formula as written in its source code (float64), SSF merged == unmerged,
and the stated behaviour at initialisation. The eight PEFT-style adapters: tests/test_adapters.py.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import copy
import math

import numpy as np
import pytest
import timm
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from pvera_bench import adapters
from pvera_bench.adapters.base import adapter_layers
from pvera_bench.adapters.ssf import ScaleShift
from pvera_bench.adapters.vpt import PromptedBlock
from pvera_bench.backbones import Classifier
from pvera_bench.data import Split
from pvera_bench.paths import config_dir
from pvera_bench.schema import ConfigError, validate
from pvera_bench.train import Trainer

from conftest import tiny_vit  # frozen=True: a tiny frozen ViT (d=32, 2 blocks, 8x8 patches) with non-zero biases

BASELINES = ("bitfit", "full", "ssf", "vpt")
D, DEPTH, HIDDEN, PATCH = 32, 2, 128, 8  # the tiny ViT of test_adapters.py


def images(seed: int = 0, batch: int = 3, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def perturb(model: nn.Module, scale: float = 0.1, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


# -- the README table's formulas: trainable backbone parameters, d wide, L blocks, MLP width h ---
def formula(name: str, d: int, L: int, h: int, patch: int, tokens: int, length: int = 10, depth: str = "shallow") -> int:
    return {
        # patch conv + bias, CLS, position embeddings, per block (2 LNs, qkv, proj, fc1, fc2), final LN
        "full": d * (3 * patch * patch + 1) + d + tokens * d + L * (4 * d * d + 2 * d * h + 9 * d + h) + 2 * d,
        # biases: patch conv, per block norm1, qkv (3d), proj, norm2, fc1 (h), fc2; final norm
        "bitfit": d + L * (7 * d + h) + d,
        "vpt": (L if depth == "deep" else 1) * length * d,
        # scale and shift: patch embedding, per block norm1, qkv, proj, norm2, fc1, fc2; final norm
        "ssf": 2 * (d + L * (7 * d + h) + d),
    }[name]


@pytest.fixture(scope="module")
def vit_b16():
    m = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def test_registry_holds_the_four_baselines():
    assert set(BASELINES) <= set(adapters.available())
    assert len(adapters.available()) == 12


@pytest.mark.parametrize("name,options,expected", [
    ("full", {}, 85_798_656),
    ("bitfit", {}, 102_912),
    ("vpt", dict(length=10, depth="deep"), 92_160),   # 12 x 10 x 768
    ("vpt", dict(length=10, depth="shallow"), 7_680),  # 10 x 768
    ("vpt", dict(length=50, depth="deep"), 460_800),
    ("ssf", {}, 205_824),
])
def test_counts_on_vit_b16_equal_the_formulas(vit_b16, name, options, expected):
    m = adapters.apply(copy.deepcopy(vit_b16), name, **options)
    assert adapters.count_trainable(m) == expected
    assert expected == formula(name, 768, 12, 3072, 16, 197, **options)
    if name == "full":
        assert expected == sum(p.numel() for p in vit_b16.parameters())
    if name == "bitfit":
        assert expected == sum(p.numel() for n, p in vit_b16.named_parameters() if n.endswith(".bias"))
    assert adapters.count_frozen_buffers(m) == 0
    # the head is counted apart, as for every adapter
    clf = Classifier(m, 100)
    assert adapters.count_trainable(clf) == expected + 768 * 100 + 100


@pytest.mark.parametrize("name", BASELINES)
def test_counts_on_the_tiny_vit_equal_the_formulas(name):
    m = adapters.apply(tiny_vit(frozen=True), name)
    assert adapters.count_trainable(m) == formula(name, D, DEPTH, HIDDEN, PATCH, 1 + (32 // PATCH) ** 2)


# --------------------------------------------------------------------------------------------
# full and BitFit: nothing inserted, identity at init, the right tensors train
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["full", "bitfit"])
def test_full_and_bitfit_train_backbone_tensors_and_start_as_the_frozen_model(name):
    frozen = tiny_vit(frozen=True)
    model = adapters.apply(copy.deepcopy(frozen), name)
    assert not list(adapter_layers(model)) and adapters.merge(model) == 0
    assert not adapters.fully_mergeable(model)
    for n, p in model.named_parameters():
        assert p.requires_grad == (name == "full" or n.endswith(".bias")), n
    x = images()
    with torch.no_grad():
        assert torch.equal(model(x), frozen(x))


def test_bitfit_changes_only_biases_in_a_training_step():
    model = Classifier(adapters.apply(tiny_vit(frozen=True), "bitfit"), 5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    imgs = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    nn.functional.cross_entropy(model(imgs), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    for n, p in model.named_parameters():
        moved = not torch.equal(p, before[n])
        assert moved == (n.endswith(".bias") or n.startswith("head.")), n


# --------------------------------------------------------------------------------------------
# VPT
# --------------------------------------------------------------------------------------------
def vpt_by_the_source(frozen: nn.Module, prompts: list[torch.Tensor], x: torch.Tensor, deep: bool) -> torch.Tensor:
    """KMnP/vpt src/models/vit_prompt/vit.py as written: ``incorporate_prompt`` puts the prompts
    after the CLS token of the embedded sequence; ``forward_deep_prompt`` replaces tokens
    ``1 : 1 + n`` by layer i's prompts before every later layer; the encoder norm, then ``x[:, 0]``."""
    B, n = x.shape[0], prompts[0].shape[1]
    h = frozen.norm_pre(frozen._pos_embed(frozen.patch_embed(x)))  # the source's self.embeddings(x)
    h = torch.cat((h[:, :1], prompts[0].expand(B, -1, -1), h[:, 1:]), dim=1)
    for i, blk in enumerate(frozen.blocks):
        if deep and i > 0:
            h = torch.cat((h[:, :1], prompts[i].expand(B, -1, -1), h[:, 1 + n:]), dim=1)
        h = blk(h)
    return frozen.norm(h)[:, 0]


@pytest.mark.parametrize("depth", ["shallow", "deep"])
def test_vpt_equals_the_source_formula_in_float64(depth):
    frozen = tiny_vit(dtype=torch.float64, frozen=True)
    model = adapters.apply(copy.deepcopy(frozen), "vpt", length=3, depth=depth, dropout=0.3).eval()
    layers = list(adapter_layers(model))
    assert len(layers) == DEPTH and all(isinstance(m, PromptedBlock) for m in layers)
    prompts = [m.prompt for m in layers if m.prompt is not None]
    assert len(prompts) == (DEPTH if depth == "deep" else 1)
    assert all(p.shape == (1, 3, D) and p.dtype == torch.float64 for p in prompts)
    x = images(dtype=torch.float64)
    with torch.no_grad():
        got = model(x)
        want = vpt_by_the_source(frozen, prompts, x, depth == "deep")
        assert got.shape == frozen(x).shape == (3, D)
        assert (got - want).abs().max() < 1e-12
        assert (got - frozen(x)).abs().max() > 1e-3  # the prompts do change the CLS feature
        # the prompts leave the sequence after the last block: same tokens as the frozen model
        assert model.forward_features(x).shape == frozen.forward_features(x).shape


def test_vpt_init_and_dropout_as_the_source():
    m = adapters.apply(timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0), "vpt",
                       length=50, depth="deep", dropout=0.1)
    v = math.sqrt(6.0 / (3 * 16 * 16 + 768))  # uniform bound: sqrt(6 / (3 * patch area + d)) = 0.0625
    allp = torch.cat([p.detach().flatten() for p in m.parameters() if p.requires_grad])
    assert allp.numel() == 12 * 50 * 768
    assert allp.abs().max() <= v and allp.abs().max() > 0.99 * v
    assert abs(allp.std().item() - v / math.sqrt(3)) < 0.01 * v  # U(-v, v)
    m = adapters.apply(timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0), "vpt",
                       length=100, init="vpetl")  # V-PETL-Bench's VPT-Shallow: sqrt(6 / d)
    (p,) = [p for p in m.parameters() if p.requires_grad]
    assert p.numel() == 76_800 and 0.99 * math.sqrt(6 / 768) < p.abs().max() <= math.sqrt(6 / 768)
    # prompt dropout: in training only, drawn per sample (the source drops the prompts expanded over the batch)
    tiny = adapters.apply(tiny_vit(frozen=True), "vpt", length=4, dropout=0.5)
    x = images(batch=1).expand(4, -1, -1, -1)
    with torch.no_grad():
        tiny.train()
        y = tiny(x)
        assert not torch.equal(y[0], y[1])
        tiny.eval()
        y = tiny(x)
        assert torch.equal(y[0], y[1]) and torch.equal(y, tiny(x))


def test_vpt_keeps_timms_fused_attention(monkeypatch):
    """The blocks are wrapped, not changed: every attention still runs F.scaled_dot_product_attention,
    on the sequence with the prompts (CLS + prompts + patches)."""
    model = adapters.apply(tiny_vit(frozen=True), "vpt", length=5, depth="deep")
    assert all(b.block.attn.fused_attn for b in model.blocks)
    seen = []
    real = nn.functional.scaled_dot_product_attention

    def spy(q, *a, **k):
        seen.append(q.shape[-2])
        return real(q, *a, **k)

    monkeypatch.setattr(nn.functional, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        model(images())
    assert seen == [1 + 5 + (32 // PATCH) ** 2] * DEPTH


def test_vpt_options_are_checked_before_loading():
    def cfg(*o):
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose("config", overrides=["task=demo", "backbone=vit_tiny_random", "adapter=vpt", *o])

    validate(cfg("adapter.depth=deep", "adapter.length=50"))
    for o, says in (("adapter.depth=middle", "shallow, deep"), ("adapter.length=0", ">= 1"),
                    ("adapter.length=2.5", "integer"), ("adapter.dropout=1.0", "< 1")):
        with pytest.raises(ConfigError, match="adapter."):
            validate(cfg(o))
        with pytest.raises(ConfigError) as e:
            validate(cfg(o))
        assert says in str(e.value), (o, str(e.value))
    with pytest.raises(adapters.AdapterOptionError):
        adapters.apply(tiny_vit(frozen=True), "vpt", length=0)


# --------------------------------------------------------------------------------------------
# SSF
# --------------------------------------------------------------------------------------------
def ssf_by_the_source(frozen: nn.Module, ssf: dict[str, tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
    """dongzelian/SSF models/vision_transformer.py with tuning_mode='ssf', as written:
    ``ssf_ada(x, scale, shift) = x * scale + shift`` after PatchEmbed's projection; in each Block
    after norm1 and norm2, in Attention after qkv and proj, in Mlp after fc1 (before the activation)
    and fc2; after the final norm; then the CLS token (global_pool='token')."""
    def ada(t, key):
        s, b = ssf[key]
        return t * s + b

    pe = frozen.patch_embed
    h = ada(pe.proj(x).flatten(2).transpose(1, 2), "patch_embed.proj")
    h = frozen._pos_embed(h)
    for i, blk in enumerate(frozen.blocks):
        a = blk.attn
        u = ada(blk.norm1(h), f"blocks.{i}.norm1")
        B, N, C = u.shape
        qkv = ada(a.qkv(u), f"blocks.{i}.attn.qkv").reshape(B, N, 3, a.num_heads, C // a.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        att = ((q @ k.transpose(-2, -1)) * a.scale).softmax(-1)
        h = h + ada(a.proj((att @ v).transpose(1, 2).reshape(B, N, C)), f"blocks.{i}.attn.proj")
        u = ada(blk.norm2(h), f"blocks.{i}.norm2")
        u = ada(blk.mlp.fc2(blk.mlp.act(ada(blk.mlp.fc1(u), f"blocks.{i}.mlp.fc1"))), f"blocks.{i}.mlp.fc2")
        h = h + u
    return ada(frozen.norm(h), "norm")[:, 0]


def test_ssf_equals_the_source_formula_in_float64():
    frozen = tiny_vit(dtype=torch.float64, frozen=True)
    model = adapters.apply(copy.deepcopy(frozen), "ssf").eval()
    perturb(model, 0.2)
    ssf = {n: (m.scale, m.shift) for n, m in model.named_modules() if isinstance(m, ScaleShift)}
    assert sorted(ssf) == sorted(["patch_embed.proj", "norm"] + [f"blocks.{i}.{k}" for i in range(DEPTH) for k in
                                  ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")])
    x = images(dtype=torch.float64)
    with torch.no_grad():
        got, want = model(x), ssf_by_the_source(frozen, ssf, x)
    assert (got - want).abs().max() < 1e-12


def test_ssf_init_as_the_source(vit_b16):
    m = adapters.apply(copy.deepcopy(vit_b16), "ssf")
    layers = [l for l in adapter_layers(m)]
    s = torch.cat([l.scale.detach() for l in layers])
    t = torch.cat([l.shift.detach() for l in layers])
    assert s.numel() == t.numel() == 205_824 // 2
    assert abs(s.mean().item() - 1) < 1e-3 and abs(s.std().item() - 0.02) < 1e-3  # N(1, 0.02^2)
    assert abs(t.mean().item()) < 1e-3 and abs(t.std().item() - 0.02) < 1e-3      # N(0, 0.02^2)


def test_ssf_merged_equals_unmerged_in_float64_and_unmerge_restores():
    model = adapters.apply(tiny_vit(dtype=torch.float64, frozen=True), "ssf").eval()
    perturb(model, 0.3)
    layers = list(adapter_layers(model))
    assert len(layers) == 2 + 6 * DEPTH and adapters.fully_mergeable(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    x = images(dtype=torch.float64)
    with torch.no_grad():
        y0 = model(x)
        assert adapters.merge(model) == len(layers)
        changed = [n for n, p in model.named_parameters() if n in frozen and not torch.equal(p, frozen[n])]
        assert len(changed) == 2 * len(layers)  # every wrapped weight and bias absorbed its scale-shift
        y1 = model(x)
        assert (y1 - y0).abs().max() < 1e-10
        model.train()
        with pytest.raises(RuntimeError, match="merged"):
            model(x)
        model.eval()
        adapters.unmerge(model)
        assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
        assert torch.equal(model(x), y0)


def test_ssf_is_evaluated_merged_by_the_trainer():
    torch.manual_seed(0)
    clf = Classifier(adapters.apply(tiny_vit(frozen=True), "ssf"), 5)
    perturb(clf, 0.2)
    rng = np.random.default_rng(0)
    data = Split(rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8), rng.integers(0, 5, 12).astype(np.int64))
    cfg = dict(epochs=1, batch_size=4, lr_head=1e-2, lr_adapter=1e-3, wd_head=0.0, wd_adapter=0.0, warmup_epochs=0,
               schedule="cosine", min_lr=0.0, shuffle=True, eval_every=1, precision="fp32", eval_batch_size=5,
               progress=False)
    trainer = Trainer(clf, cfg, torch.device("cpu"))
    calls = []
    real = adapters.merge
    adapters.merge = lambda m: calls.append(1) or real(m)
    try:
        pred = trainer.predict(data, progress=False)
    finally:
        adapters.merge = real
    clf.eval()
    with torch.inference_mode():
        ref = clf(torch.from_numpy(data.images)).float().softmax(-1)
    assert calls == [1] and not any(m.merged for m in adapter_layers(clf))
    torch.testing.assert_close(pred.probs, ref, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------
# all four through the trainer's paths
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BASELINES)
def test_training_step_and_bf16(name):
    backbone = adapters.apply(tiny_vit(frozen=True), name)
    clf = Classifier(backbone, 5).train()
    trainer = Trainer(clf, dict(epochs=1, batch_size=4, lr_head=1e-2, lr_adapter=1e-3, wd_head=0.0, wd_adapter=0.0,
                                warmup_epochs=0, schedule="cosine", min_lr=0.0, shuffle=True, eval_every=1,
                                precision="fp32", eval_batch_size=8, progress=False), torch.device("cpu"))
    assert not trainer.frozen_features  # the backbone trains: no cached features (linear probing's path)
    imgs = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(clf(imgs).float(), torch.tensor([0, 1, 2, 3]))
    assert torch.isfinite(loss)
    loss.backward()
    for n, p in clf.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n


# --------------------------------------------------------------------------------------------
# published rows: --reference vpetl gives Δ rows for the four (VPT by depth)
# --------------------------------------------------------------------------------------------
def test_reference_vpetl_has_delta_rows_for_the_baselines(capsys, tmp_path):
    import io
    import json

    import pandas as pd

    from pvera_bench import report

    def row(adapter, acc, **opts):
        return dict(task="cifar100", adapter=adapter, backbone="vit_b16", protocol="vtab", seed=0, test_acc=acc,
                    params_adapter=1000, status="ok", adapter_options=json.dumps(opts))

    path = tmp_path / "r.csv"
    pd.DataFrame([row("full", 70.0), row("bitfit", 71.0), row("ssf", 72.0),
                  row("vpt", 73.0, length=10, depth="shallow", dropout=0.0),
                  row("vpt", 74.0, length=10, depth="deep", dropout=0.0)]).to_csv(path, index=False)
    assert report.main(["--results", str(path), "--reference", "vpetl", "--format", "csv"]) == 0
    df = pd.read_csv(io.StringIO(capsys.readouterr().out))
    delta = df[df["kind"] == "delta"]
    got = {(r["adapter"], r["label"].split("published: ")[1].split(" [")[0]): round(r["cifar100"], 6)
           for _, r in delta.iterrows()}
    # V-PETL-Bench README (c188fad), CIFAR-100 column: full 68.9, BitFit 72.8, SSF 69.0, VPT-Shallow 77.7, VPT-Deep 78.8
    assert got == {("full", "full fine-tuning"): 1.1, ("bitfit", "BitFit"): -1.8, ("ssf", "SSF"): 3.0,
                   ("vpt", "VPT-Shallow"): -4.7, ("vpt", "VPT-Deep"): -4.8}
