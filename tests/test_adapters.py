"""Adapters on a frozen timm ViT: real numbers, checked against the doc's math and PEFT.

A tiny ViT (d=32, 2 blocks, MLP hidden 128) keeps everything fast; the ViT-B/16 parameter
counts are checked once on a model built once. PEFT (the reference implementation) is
imported lazily in a module-scoped fixture, because it pulls in transformers.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import copy
import math

import pytest
import timm
import torch
from torch import nn

from pvera_bench import adapters
from pvera_bench.adapters import AdapterLayer
from pvera_bench.adapters.base import adapter_layers
from pvera_bench.backbones import Classifier

from conftest import tiny_vit

D, DEPTH, HIDDEN = 32, 2, 128  # vit_tiny's mlp_ratio is 4: hidden = 4d
BATCH = 3

OPTIONS = {
    "lora": dict(r=4),
    "dora": dict(r=4),
    "vera": dict(r=16),
    "pvera": dict(r=16),
    "ia3": {},
    "adaptformer": dict(width=8),
    "bottleneck": dict(width=4),
    "linear_probe": {},
}
QV_ONLY = ("lora", "dora", "vera", "pvera")
MERGEABLE = ("lora", "dora", "vera", "pvera", "ia3")
BASELINES = ("bitfit", "full", "ssf", "vpt")  # their own invariants: tests/test_baselines.py
NAMES = [n for n in adapters.available() if n not in BASELINES]



# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def adapted(name: str, seed: int = 0, **overrides):
    """(frozen reference, adapted copy) with the matrix options for ``name``."""
    frozen = tiny_vit(seed, frozen=True)
    model = adapters.apply(copy.deepcopy(frozen), name, **{**OPTIONS[name], **overrides})
    return frozen, model.eval()


def perturb(model: nn.Module, scale: float = 0.1, seed: int = 1) -> None:
    """Add random non-zero noise to every trainable tensor (zero-initialised ones included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def images(seed: int = 0, batch: int = BATCH) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def tokens(seed: int = 0, dim: int = D) -> torch.Tensor:
    return torch.randn(2, 5, dim, generator=torch.Generator().manual_seed(seed))


def thirds(out: torch.Tensor) -> torch.Tensor:
    return out.unflatten(-1, (3, D))


def per_block(name: str, d: int, hidden: int, r: int | None = None, width: int | None = None) -> int:
    """The doc's table: trainable parameters per block."""
    return {
        "lora": lambda: 2 * 2 * d * r,
        "dora": lambda: 2 * (2 * d * r + d),
        "vera": lambda: 2 * (r + d),
        "pvera": lambda: 2 * (2 * r + d),
        "ia3": lambda: d + d + hidden,
        "adaptformer": lambda: 2 * d * width + width + d,
        "bottleneck": lambda: 2 * (2 * d * width + width + d),
        "linear_probe": lambda: 0,
    }[name]()


def frozen_extras(name: str, d: int, r: int | None = None) -> int:
    if name == "vera":
        return d * 2 * r + 2 * r * d
    if name == "pvera":
        return d * 4 * r + 2 * r * d
    return 0


def qkv_layers(model):
    return [blk.attn.qkv for blk in model.blocks]


# --------------------------------------------------------------------------------------------
# 1. the matrix over all eight adapters
# --------------------------------------------------------------------------------------------
def test_registry_holds_the_eight_adapters():
    assert sorted(NAMES) == sorted(OPTIONS) and sorted(NAMES + list(BASELINES)) == adapters.available()
    with pytest.raises(adapters.UnknownAdapterError):
        adapters.apply(tiny_vit(frozen=True), "no_such_adapter")
    with pytest.raises(TypeError, match="lora"):
        adapters.apply(tiny_vit(frozen=True), "lora", rank=4)  # wrong option name is reported with the adapter


@pytest.mark.parametrize("name", NAMES)
def test_shape_and_identity_at_init(name):
    frozen, model = adapted(name)
    x = images()
    with torch.no_grad():
        ref = frozen(x)
        for mode in ("eval", "train"):  # pvera samples in train mode, but lambda_b = 0 at init
            getattr(model, mode)()
            frozen.train(mode == "train")
            y = model(x)
            assert y.shape == (BATCH, D)
            assert torch.equal(y, ref), (name, mode, (y - ref).abs().max().item())


@pytest.mark.parametrize("name", NAMES)
def test_only_adapter_tensors_train(name):
    model = tiny_vit(frozen=True)
    before = {id(p): (p, p.detach().clone()) for p in model.parameters()}
    adapters.apply(model, name, **OPTIONS[name])
    params = list(model.parameters())
    now = {id(p) for p in params}
    assert set(before) <= now, "apply dropped a frozen parameter from the model"
    for p, saved in before.values():  # every original parameter: frozen and untouched
        assert not p.requires_grad
        assert torch.equal(p, saved)
    in_adapters = {id(p) for m in adapter_layers(model) for p in m.parameters()}
    new = [p for p in params if id(p) not in before]
    trainable = [p for p in params if p.requires_grad]
    assert {id(p) for p in new} == {id(p) for p in trainable}
    assert all(id(p) in in_adapters for p in new), "a new parameter lives outside an AdapterLayer"
    if name != "linear_probe":
        assert trainable
        assert len(list(adapter_layers(model))) >= DEPTH
    else:
        assert not trainable and not list(adapter_layers(model))


@pytest.mark.parametrize("name", NAMES)
def test_counts_match_the_formulas(name):
    frozen, model = adapted(name)
    assert frozen.blocks[0].mlp.fc1.out_features == HIDDEN
    o = OPTIONS[name]
    expected = DEPTH * per_block(name, D, HIDDEN, o.get("r"), o.get("width"))
    assert adapters.count_trainable(model) == expected
    assert adapters.count_frozen_buffers(model) == frozen_extras(name, D, o.get("r"))
    assert adapters.count_trainable(tiny_vit(frozen=True)) == 0


@pytest.mark.parametrize("name", ["vera", "pvera"])
def test_shared_projections_are_seeded_buffers(name):
    r = OPTIONS[name]["r"]
    torch.manual_seed(123)  # with projection_seed set, the global RNG must not matter
    _, model = adapted(name, init="peft", projection_seed=0)
    torch.manual_seed(456)
    _, same = adapted(name, init="peft", projection_seed=0)
    _, other = adapted(name, init="peft", projection_seed=1)
    shared = getattr(model, f"{name}_shared")
    a_cols = 2 * r if name == "vera" else 4 * r
    assert shared.A.shape == (D, a_cols) and shared.B.shape == (2, r, D)
    bufs = dict(model.named_buffers())
    assert bufs[f"{name}_shared.A"] is shared.A and bufs[f"{name}_shared.B"] is shared.B
    pids = {id(p) for p in model.parameters()}
    assert id(shared.A) not in pids and id(shared.B) not in pids
    assert not shared.A.requires_grad and not shared.B.requires_grad
    # Kaiming-uniform bounds sqrt(6 / fan_in), as PEFT
    assert shared.A.abs().max() <= math.sqrt(6 / D) and shared.B.abs().max() <= math.sqrt(6 / r)
    assert shared.A.std() > 0.5 * math.sqrt(2 / D)
    # one copy, referenced by every layer
    assert all(layer.shared is shared for layer in qkv_layers(model))
    s2, s3 = getattr(same, f"{name}_shared"), getattr(other, f"{name}_shared")
    assert torch.equal(shared.A, s2.A) and torch.equal(shared.B, s2.B)
    assert not torch.equal(shared.A, s3.A) and not torch.equal(shared.B, s3.B)
    # deepcopy and .to() keep the sharing
    dup = copy.deepcopy(model)
    assert all(layer.shared is getattr(dup, f"{name}_shared") for layer in qkv_layers(dup))
    dup.double()
    assert all(layer.shared.A.dtype == torch.float64 for layer in qkv_layers(dup))


@pytest.mark.parametrize("name", QV_ONLY)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_qv_only_k_third_untouched(name, mode):
    _, model = adapted(name)
    perturb(model)
    getattr(model, mode)()
    seen = []
    hooks = []
    for layer in qkv_layers(model):
        assert isinstance(layer, AdapterLayer) and isinstance(layer.base, nn.Linear)
        rec = {}
        seen.append(rec)
        # the base's output is updated in place by the adapter afterwards: clone it now
        hooks.append(layer.base.register_forward_hook(
            lambda m, i, o, rec=rec: rec.__setitem__("base", o.detach().clone())))
        hooks.append(layer.register_forward_hook(
            lambda m, i, o, rec=rec: rec.update(x=i[0].detach().clone(), out=o.detach().clone())))
    with torch.no_grad():
        model(images())
        for layer, rec in zip(qkv_layers(model), seen):
            out, base_hooked = thirds(rec["out"]), thirds(rec["base"])
            fresh = thirds(layer.base(rec["x"]))  # the frozen nn.Linear on the same input
            assert torch.equal(out[..., 1, :], fresh[..., 1, :])
            assert torch.equal(out[..., 1, :], base_hooked[..., 1, :])
            for k in (0, 2):
                assert (out[..., k, :] - fresh[..., k, :]).abs().max() > 1e-4, (name, k)
    for h in hooks:
        h.remove()


def test_ia3_scales_k_and_v_and_leaves_q():
    _, model = adapted("ia3")
    perturb(model)
    layer = qkv_layers(model)[0]
    x = tokens()
    with torch.no_grad():
        out, ref = thirds(layer(x)), thirds(layer.base(x))
        assert torch.equal(out[..., 0, :], ref[..., 0, :])
        torch.testing.assert_close(out[..., 1, :], ref[..., 1, :] * layer.scale_kv[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(out[..., 2, :], ref[..., 2, :] * layer.scale_kv[1], rtol=0, atol=1e-6)
        ff = model.blocks[0].mlp.fc2
        h = tokens(dim=HIDDEN)
        torch.testing.assert_close(ff(h), ff.base(h * ff.scale_ff), rtol=0, atol=1e-6)


def test_adapter_math_by_hand():
    """The doc's formulas, written out, on one layer each: lora, vera, pvera (mean and fixed),
    adaptformer (s * Up(ReLU(Down(x))) beside the MLP) and bottleneck (h + Up(GELU(Down(h))))."""
    x = tokens(3)
    with torch.no_grad():
        _, m = adapted("lora", alpha=6.0)
        perturb(m)
        L = qkv_layers(m)[1]
        r = 4
        out, ref = thirds(L(x)), thirds(L.base(x))
        for i, k in enumerate((0, 2)):
            a = L.lora_A[:, i * r:(i + 1) * r]
            torch.testing.assert_close(out[..., k, :] - ref[..., k, :], (6.0 / r) * x @ a @ L.lora_B[i],
                                       rtol=1e-5, atol=1e-6)

        _, m = adapted("vera", alpha=3.0)
        perturb(m)
        L, r, S = qkv_layers(m)[1], 16, m.vera_shared
        out, ref = thirds(L(x)), thirds(L.base(x))
        for i, k in enumerate((0, 2)):
            h = (x @ S.A[:, i * r:(i + 1) * r]) * L.lambda_d[i * r:(i + 1) * r]
            torch.testing.assert_close(out[..., k, :] - ref[..., k, :], 3.0 * (h @ S.B[i]) * L.lambda_b[i],
                                       rtol=1e-5, atol=1e-6)

        _, m = adapted("pvera", alpha=16.0)
        perturb(m)
        L, r, S = qkv_layers(m)[1], 16, m.pvera_shared
        for mode in ("mean", "fixed"):
            adapters.set_inference(m, mode)
            out, ref = thirds(L(x)), thirds(L.base(x))
            for i, k in enumerate((0, 2)):
                h = (x @ S.A[:, 2 * r * i:2 * r * (i + 1)]) * L.lambda_d[2 * r * i:2 * r * (i + 1)]
                mu, logvar = h[..., :r], h[..., r:]
                z = mu if mode == "mean" else mu + torch.exp(logvar / 2)
                torch.testing.assert_close(out[..., k, :] - ref[..., k, :], 16.0 * (z @ S.B[i]) * L.lambda_b[i],
                                           rtol=1e-5, atol=1e-6)

        _, m = adapted("adaptformer", scale=0.1)
        perturb(m)
        blk = m.blocks[0]
        pm = blk.mlp
        expected = pm.ls(pm.mlp(pm.norm(x))) + 0.1 * pm.adapter.up(torch.relu(pm.adapter.down(x)))
        torch.testing.assert_close(pm(x), expected, rtol=0, atol=1e-6)
        assert isinstance(blk.norm2, nn.Identity) and isinstance(blk.ls2, nn.Identity)

        _, m = adapted("bottleneck")
        perturb(m)
        sa = m.blocks[0].mlp
        y = sa.module(x)
        expected = y + sa.adapter.up(nn.functional.gelu(sa.adapter.down(y)))
        torch.testing.assert_close(sa(x), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_merge_equals_unmerged_and_unmerge_restores(name):
    _, model = adapted(name)
    perturb(model)
    model.eval()
    x = images(5)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    with torch.no_grad():
        y0 = model(x)
        n_merged = adapters.merge(model)
        y1 = model(x)
    layers = list(adapter_layers(model))
    changed = [n for n, p in model.named_parameters() if n in frozen_before and not torch.equal(p, frozen_before[n])]
    if name in MERGEABLE:
        assert n_merged == len(layers) == (2 * DEPTH if name == "ia3" else DEPTH)
        assert all(m.merged for m in layers)
        assert adapters.fully_mergeable(model)
        assert changed, "merge did not change any frozen weight"
        torch.testing.assert_close(y1, y0, rtol=0, atol=1e-5)
        assert (y1 - y0).abs().max() < 1e-5
        # a merged model must not be trained
        model.train()
        with pytest.raises(RuntimeError, match="merged"):
            model(x)
        model.eval()
    else:
        assert n_merged == 0
        assert not changed
        assert not adapters.fully_mergeable(model)
        assert torch.equal(y1, y0)
    adapters.unmerge(model)
    assert not any(m.merged for m in layers)
    for n, p in model.named_parameters():
        if n in frozen_before:
            assert torch.equal(p, frozen_before[n]), n
    with torch.no_grad():
        assert torch.equal(model(x), y0)
    # merge after unmerge works again
    with torch.no_grad():
        adapters.merge(model)
        torch.testing.assert_close(model(x), y0, rtol=0, atol=1e-5)
        adapters.unmerge(model)
        assert torch.equal(model(x), y0)


@pytest.mark.parametrize("mode", ["fixed", "mc"])
def test_pvera_fixed_and_mc_are_not_mergeable(mode):
    _, model = adapted("pvera", inference=mode, mc_samples=2)
    perturb(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert not any(m.can_merge() for m in adapter_layers(model))
    assert not adapters.fully_mergeable(model)
    assert adapters.merge(model) == 0
    assert not any(m.merged for m in adapter_layers(model))
    for n, p in model.named_parameters():
        if n in before:
            assert torch.equal(p, before[n])
    adapters.set_inference(model, "mean")
    assert adapters.fully_mergeable(model)


@pytest.mark.parametrize("name", NAMES)
def test_training_step_gives_finite_grads(name):
    _, backbone = adapted(name, beta=10.0) if name == "pvera" else adapted(name)
    perturb(backbone)
    clf = Classifier(backbone, 5).train()
    imgs = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3])
    aux = adapters.aux_losses(clf)
    assert len(aux) == (DEPTH if name == "pvera" else 0)
    loss = nn.functional.cross_entropy(clf(imgs), labels)
    extra = [t for m in aux if (t := m.aux_loss()) is not None]
    assert len(extra) == len(aux)
    loss = loss + sum(extra)
    assert torch.isfinite(loss)
    loss.backward()
    trainable = [(n, p) for n, p in clf.named_parameters() if p.requires_grad]
    assert {n for n, _ in trainable} >= {"head.weight", "head.bias"}
    assert len(trainable) == 2 + len([p for p in backbone.parameters() if p.requires_grad])
    for n, p in clf.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, n
            assert torch.isfinite(p.grad).all(), n
            assert p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n


def test_init_values():
    """The doc's initialisations: the update starts at exactly zero, the rest as PEFT/the papers."""
    _, m = adapted("lora")
    for L in qkv_layers(m):
        assert L.lora_A.shape == (D, 8) and L.lora_B.shape == (2, 4, D)
        assert torch.count_nonzero(L.lora_B) == 0
        assert L.lora_A.abs().max() <= 1 / math.sqrt(D) and L.lora_A.std() > 0.1 / math.sqrt(D)
    _, m = adapted("dora")
    for L in qkv_layers(m):
        w = L.base.weight.view(3, D, D)
        torch.testing.assert_close(L.magnitude, torch.linalg.vector_norm(w[0::2], dim=-1), rtol=0, atol=0)
    for name, cols in (("vera", 2 * 16), ("pvera", 4 * 16)):
        _, m = adapted(name, init="peft")  # PEFT's; the default (pvera_code): tests/test_adapter_variants.py
        for L in qkv_layers(m):
            assert L.lambda_d.shape == (cols,) and torch.equal(L.lambda_d, torch.full((cols,), 0.1))
            assert L.lambda_b.shape == (2, D) and torch.count_nonzero(L.lambda_b) == 0
    _, m = adapted("ia3")
    for blk in m.blocks:
        assert torch.equal(blk.attn.qkv.scale_kv, torch.ones(2, D))
        assert torch.equal(blk.mlp.fc2.scale_ff, torch.ones(HIDDEN))
    _, m = adapted("adaptformer")
    for blk in m.blocks:
        assert blk.mlp.scale == 0.1  # fixed, not trained
        assert blk.mlp.adapter.down.weight.shape == (8, D) and blk.mlp.adapter.up.weight.shape == (D, 8)
        assert torch.count_nonzero(blk.mlp.adapter.up.weight) == 0 and torch.count_nonzero(blk.mlp.adapter.up.bias) == 0
        assert torch.count_nonzero(blk.mlp.adapter.down.weight) > 0
    _, m = adapted("bottleneck")
    for blk in m.blocks:
        for sa in (blk.attn, blk.mlp):
            assert sa.adapter.down.weight.shape == (4, D)
            assert torch.count_nonzero(sa.adapter.up.weight) == 0 and torch.count_nonzero(sa.adapter.up.bias) == 0


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast(name):
    """The trainer runs under bf16 autocast on CUDA: forward and backward must work and agree
    with fp32 to bf16 accuracy (checked here with CPU autocast)."""
    _, model = adapted(name)
    perturb(model)
    model.train()
    x = images(8)
    if name == "pvera":
        model.eval()  # deterministic mean mode for the comparison
    with torch.no_grad():
        ref = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
        loss = y.float().square().mean()
    assert torch.isfinite(y).all()
    assert (y.float() - ref).abs().max() < 0.15
    if name == "linear_probe":
        return  # nothing in the backbone trains
    loss.backward()
    for p in model.parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()


# --------------------------------------------------------------------------------------------
# 2. PVeRA specifics
# --------------------------------------------------------------------------------------------
def test_pvera_modes():
    _, model = adapted("pvera")
    x = images(7)
    with torch.no_grad():
        model.train()  # lambda_b = 0: sampling changes nothing yet
        assert torch.equal(model(x), model(x))
        perturb(model)
        a, b = model(x), model(x)
        assert (a - b).abs().max() > 1e-5, "training forward is not stochastic"
        model.eval()
        mean1, mean2 = model(x), model(x)
        assert torch.equal(mean1, mean2)
        adapters.set_inference(model, "fixed")
        f1, f2 = model(x), model(x)
        assert torch.equal(f1, f2)
        assert (f1 - mean1).abs().max() > 1e-5
        adapters.set_inference(model, "mc", 4)
        m1, m2 = model(x), model(x)
        assert (m1 - m2).abs().max() > 1e-5
        torch.manual_seed(11)
        s1 = model(x)
        torch.manual_seed(11)
        s2 = model(x)
        assert torch.equal(s1, s2)
        adapters.set_inference(model, "mean")
        assert torch.equal(model(x), mean1)


def test_pvera_kl_by_hand():
    beta = 1e3
    _, model = adapted("pvera", beta=beta)
    perturb(model, scale=0.3)
    r, A = 16, model.pvera_shared.A
    layer = qkv_layers(model)[1]
    x = tokens(4)
    layer.train()
    assert layer.aux_loss() is None  # nothing recorded yet
    layer(x)
    kl = layer.kl
    assert kl is not None and kl.ndim == 0 and torch.isfinite(kl)
    with torch.no_grad():
        terms = []
        for i in range(2):  # q, then v
            h = (x @ A[:, 2 * r * i:2 * r * (i + 1)]) * layer.lambda_d[2 * r * i:2 * r * (i + 1)]
            mu, logvar = h[..., :r], h[..., r:]
            terms.append((-0.5 * (1 + logvar - mu**2 - torch.exp(logvar))).mean())
        expected = (terms[0] + terms[1]) / 2  # per block: the mean of the q and v terms
    assert expected > 0
    torch.testing.assert_close(kl.detach(), expected, rtol=1e-5, atol=1e-7)
    aux = layer.aux_loss()
    torch.testing.assert_close(aux.detach(), expected / beta, rtol=1e-5, atol=0)
    assert aux.requires_grad  # it trains lambda_d
    assert layer.aux_loss() is None  # consumed: not counted twice
    layer.eval()
    layer(x)
    assert layer.aux_loss() is None  # no KL at inference

    # model level: one term per block, summed
    model.train()
    model(images())
    layers = adapters.aux_losses(model)
    assert len(layers) == DEPTH
    kls = [m.kl.detach().clone() for m in layers]
    total = sum(m.aux_loss() for m in layers)
    torch.testing.assert_close(total.detach(), sum(kls) / beta)


def test_eval_samples_and_set_inference():
    _, model = adapted("pvera")
    assert adapters.eval_samples(model) == 1
    adapters.set_inference(model, "mc", 5)
    assert adapters.eval_samples(model) == 5
    adapters.set_inference(model, "fixed", 5)
    assert adapters.eval_samples(model) == 1
    _, mc = adapted("pvera", inference="mc", mc_samples=3)
    assert adapters.eval_samples(mc) == 3
    with pytest.raises(ValueError):
        adapters.set_inference(model, "median")
    with pytest.raises(ValueError):
        adapters.set_inference(model, "mc", 0)
    with pytest.raises(ValueError):
        adapted("pvera", inference="sample")
    for name in ("lora", "vera", "linear_probe"):
        _, other = adapted(name)
        assert adapters.eval_samples(other) == 1
        with pytest.raises(ValueError):
            adapters.set_inference(other, "mean")


# --------------------------------------------------------------------------------------------
# 3. ViT-B/16 counts
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vit_b():
    torch.manual_seed(0)
    return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)


@pytest.mark.parametrize("name, options, trainable, extras", [
    ("lora", dict(r=8), 294_912, 0),
    ("dora", dict(r=8), 313_344, 0),
    ("vera", dict(r=256), 24_576, 768 * 512 + 2 * 256 * 768),
    ("pvera", dict(r=256), 30_720, 768 * 1024 + 2 * 256 * 768),
    ("ia3", {}, 55_296, 0),
    ("linear_probe", {}, 0, 0),
])
def test_vit_b16_counts(vit_b, name, options, trainable, extras):
    model = adapters.apply(copy.deepcopy(vit_b), name, **options)
    assert adapters.count_trainable(model) == trainable
    assert adapters.count_frozen_buffers(model) == extras
    o = dict(options)
    assert trainable == 12 * per_block(name, 768, 3072, o.get("r"))


# --------------------------------------------------------------------------------------------
# 4. against PEFT, on one linear layer with identical tensors
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def peft():
    return pytest.importorskip("peft")


class _One(nn.Module):
    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        self.lin = lin

    def forward(self, x):
        return self.lin(x)


def _slice(base: nn.Linear, k: int) -> nn.Linear:
    """A plain Linear(d, d) equal to the q (k=0), k (1) or v (2) third of the fused qkv."""
    lin = nn.Linear(D, D)
    with torch.no_grad():
        lin.weight.copy_(base.weight[k * D:(k + 1) * D])
        lin.bias.copy_(base.bias[k * D:(k + 1) * D])
    return lin


def _wrap(peft, lin, config):
    pm = peft.get_peft_model(_One(lin), config)
    return pm, pm.base_model.model.lin


def _check_against_peft(pm, ours_out, x, merged_rows, base_rows, ours_delta=None):
    """PEFT's output equals our third; PEFT's merged weight equals ours."""
    pm.eval()
    with torch.no_grad():
        torch.testing.assert_close(pm(x), ours_out, rtol=1e-5, atol=1e-5)
        merged = pm.merge_and_unload()
        torch.testing.assert_close(merged.lin.weight, merged_rows, rtol=1e-5, atol=1e-6)
        if ours_delta is not None:
            torch.testing.assert_close(merged.lin.weight - base_rows, ours_delta, rtol=1e-4, atol=1e-6)


def _merged_rows(model, layer, k):
    """Our merged weight rows of third k, read while merged, then unmerged again."""
    adapters.merge(model)
    rows = layer.base.weight[k * D:(k + 1) * D].detach().clone()
    bias = layer.base.bias[k * D:(k + 1) * D].detach().clone()
    adapters.unmerge(model)
    return rows, bias


@pytest.mark.parametrize("which", [0, 1], ids=["q", "v"])
@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_lora_and_dora_match_peft(peft, which, dora):
    r, alpha = 4, 6.0  # scale alpha / r = 1.5
    _, model = adapted("dora" if dora else "lora", alpha=alpha)
    perturb(model, seed=3)
    layer, k = qkv_layers(model)[1], (0, 2)[which]
    x = tokens(9)
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["lin"], lora_dropout=0.0, use_dora=dora)
    pm, pl = _wrap(peft, _slice(layer.base, k), cfg)
    with torch.no_grad():
        pl.lora_A["default"].weight.copy_(layer.lora_A[:, which * r:(which + 1) * r].T)
        pl.lora_B["default"].weight.copy_(layer.lora_B[which].T)
        if dora:
            # PEFT's magnitude starts as ||W|| per output row, as ours does
            torch.testing.assert_close(pl.lora_magnitude_vector["default"].weight,
                                       torch.linalg.vector_norm(layer.base.weight[k * D:(k + 1) * D], dim=1))
            pl.lora_magnitude_vector["default"].weight.copy_(layer.magnitude[which])
        ours = thirds(layer(x))[..., k, :]
        delta = layer.delta_weight()[which]
    # gradients agree too (DoRA: the norm is a constant in backward, in both)
    w = torch.randn(x.shape[:-1] + (D,), generator=torch.Generator().manual_seed(1))
    pm.eval()
    (thirds(layer(x))[..., k, :] * w).sum().backward()
    (pm(x) * w).sum().backward()
    torch.testing.assert_close(pl.lora_A["default"].weight.grad, layer.lora_A.grad[:, which * r:(which + 1) * r].T,
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pl.lora_B["default"].weight.grad, layer.lora_B.grad[which].T, rtol=1e-4, atol=1e-5)
    if dora:
        torch.testing.assert_close(pl.lora_magnitude_vector["default"].weight.grad, layer.magnitude.grad[which],
                                   rtol=1e-4, atol=1e-5)
    rows, _ = _merged_rows(model, layer, k)
    _check_against_peft(pm, ours, x, rows, layer.base.weight[k * D:(k + 1) * D].detach(), delta)


@pytest.mark.parametrize("which", [0, 1], ids=["q", "v"])
@pytest.mark.parametrize("alpha", [1.0, 16.0])
def test_vera_matches_peft(peft, which, alpha):
    r = 16
    _, model = adapted("vera", alpha=alpha, init="peft")
    perturb(model, seed=4)
    layer, k, S = qkv_layers(model)[1], (0, 2)[which], model.vera_shared
    x = tokens(10)
    cfg = peft.VeraConfig(r=r, target_modules=["lin"], vera_dropout=0.0)
    pm, pl = _wrap(peft, _slice(layer.base, k), cfg)
    with torch.no_grad():
        assert pl.vera_A["default"].shape == (r, D) and pl.vera_B["default"].shape == (D, r)
        pl.vera_A["default"].copy_(S.A[:, which * r:(which + 1) * r].T)
        pl.vera_B["default"].copy_(S.B[which].T)
        pl.vera_lambda_d["default"].copy_(layer.lambda_d[which * r:(which + 1) * r])
        pl.vera_lambda_b["default"].copy_(layer.lambda_b[which] * alpha)  # PEFT has no alpha
        ours = thirds(layer(x))[..., k, :]
        delta = layer.delta_weight()[which]
    rows, _ = _merged_rows(model, layer, k)
    _check_against_peft(pm, ours, x, rows, layer.base.weight[k * D:(k + 1) * D].detach(), delta)


@pytest.mark.parametrize("which", [0, 1], ids=["q", "v"])
@pytest.mark.parametrize("alpha", [1.0, 16.0])
def test_pvera_mean_matches_peft(peft, which, alpha):
    r = 16
    _, model = adapted("pvera", alpha=alpha, init="peft")
    perturb(model, seed=5)
    layer, k, S = qkv_layers(model)[1], (0, 2)[which], model.pvera_shared
    x = tokens(11)
    cfg = peft.PveraConfig(r=r, target_modules=["lin"], pvera_dropout=0.0, sample_at_inference=False)
    pm, pl = _wrap(peft, _slice(layer.base, k), cfg)
    cols = slice(2 * r * which, 2 * r * (which + 1))  # [mu-half | logvar-half] of q or v
    with torch.no_grad():
        assert pl.pvera_A["default"].shape == (2 * r, D) and pl.pvera_B["default"].shape == (D, r)
        pl.pvera_A["default"].copy_(S.A[:, cols].T)
        pl.pvera_B["default"].copy_(S.B[which].T)
        pl.pvera_lambda_d["default"].copy_(layer.lambda_d[cols])
        pl.pvera_lambda_b["default"].copy_(layer.lambda_b[which] * alpha)
        model.eval()
        ours = thirds(layer(x))[..., k, :]
        delta = layer.delta_weight()[which]
    rows, _ = _merged_rows(model, layer, k)
    _check_against_peft(pm, ours, x, rows, layer.base.weight[k * D:(k + 1) * D].detach(), delta)


@pytest.mark.parametrize("k", [1, 2], ids=["k", "v"])
def test_ia3_kv_matches_peft(peft, k):
    _, model = adapted("ia3")
    perturb(model, seed=6)
    layer = qkv_layers(model)[1]
    x = tokens(12)
    cfg = peft.IA3Config(target_modules=["lin"], feedforward_modules=[])
    pm, pl = _wrap(peft, _slice(layer.base, k), cfg)
    with torch.no_grad():
        assert pl.ia3_l["default"].shape == (D, 1)
        pl.ia3_l["default"].copy_(layer.scale_kv[k - 1].view(D, 1))
        ours = thirds(layer(x))[..., k, :]
    rows, bias = _merged_rows(model, layer, k)
    pm.eval()
    with torch.no_grad():
        torch.testing.assert_close(pm(x), ours, rtol=1e-5, atol=1e-5)
        merged = pm.merge_and_unload()
        torch.testing.assert_close(merged.lin.weight, rows, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(merged.lin.bias, bias, rtol=1e-6, atol=1e-7)


def test_ia3_feedforward_matches_peft(peft):
    _, model = adapted("ia3")
    perturb(model, seed=7)
    ff = model.blocks[1].mlp.fc2
    assert ff.base.in_features == HIDDEN
    lin = nn.Linear(HIDDEN, D)
    with torch.no_grad():
        lin.weight.copy_(ff.base.weight)
        lin.bias.copy_(ff.base.bias)
    cfg = peft.IA3Config(target_modules=["lin"], feedforward_modules=["lin"])
    pm, pl = _wrap(peft, lin, cfg)
    h = tokens(13, dim=HIDDEN)
    with torch.no_grad():
        assert pl.ia3_l["default"].shape == (1, HIDDEN)
        pl.ia3_l["default"].copy_(ff.scale_ff.view(1, HIDDEN))
        ours = ff(h)
    adapters.merge(model)
    rows, bias = ff.base.weight.detach().clone(), ff.base.bias.detach().clone()
    adapters.unmerge(model)
    pm.eval()
    with torch.no_grad():
        torch.testing.assert_close(pm(h), ours, rtol=1e-5, atol=1e-5)
        merged = pm.merge_and_unload()
        torch.testing.assert_close(merged.lin.weight, rows, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(merged.lin.bias, bias, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["lora", "dora", "vera", "pvera", "ia3"])
def test_qkv_without_bias_trains(name):
    """A backbone whose qkv has no bias: the in-place q/v update must not corrupt what backward needs."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                            embed_dim=D, depth=DEPTH, num_heads=2, qkv_bias=False).requires_grad_(False)
    model = adapters.apply(vit, name)
    x = torch.randn(2, 3, 32, 32)
    for p in model.parameters():
        if p.requires_grad:
            p.data.add_(0.01)  # away from the identity init, so every gradient path is live
    model(x).square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
