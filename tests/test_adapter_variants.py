"""Adapter options the recipes need (issue 9): LoRA targets/fused/dropout/init, VeRA/PVeRA init,
AdaptFormer width/reduction/learnable scale/init, bottleneck placement/activation/init; counts by
formula, hand computations, merging, and a clear error for every bad value."""

import copy
import math

import pytest
import timm
import torch

from pvera_bench import adapters
from pvera_bench.adapters import AdapterOptionError
from pvera_bench.adapters.qkv import QVAdapter

from conftest import tiny_vit
from test_adapters import D, DEPTH, HIDDEN, perturb, qkv_layers, thirds, tokens


def apply(name, seed=0, **options):
    return adapters.apply(copy.deepcopy(tiny_vit(seed, frozen=True)), name, **options).eval()


# ------------------------------------------------------------------------------------ counts
def lora_per_block(d, r, n, fused):
    return d * r + n * r * d if fused else n * 2 * d * r


def bottleneck_one(d, w):
    return 2 * d * w + w + d


@pytest.fixture(scope="module")
def vit_b():
    torch.manual_seed(0)
    return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)


@pytest.mark.parametrize("options, trainable", [
    (dict(targets="qkv", r=8), 442_368),                 # issue 9: LoRA on q, k and v, r = 8
    (dict(targets="qkv", r=8, fused=True), 294_912),     # NOAH's LoRA (0.29M in its table)
    (dict(targets="qv", r=8), 294_912),
    (dict(targets="qv", r=8, fused=True), 221_184),
])
def test_lora_vit_b_counts(vit_b, options, trainable):
    m = adapters.apply(copy.deepcopy(vit_b), "lora", **options)
    n = len(options["targets"])  # q, k, v letters
    assert trainable == 12 * lora_per_block(768, options["r"], n, options.get("fused", False))
    assert adapters.count_trainable(m) == trainable


@pytest.mark.parametrize("name, options, per_block", [
    ("bottleneck", dict(width=8, placement="mlp"), bottleneck_one(768, 8)),            # NOAH's Adapter: 0.16M
    ("bottleneck", dict(width=None, reduction=4), 2 * bottleneck_one(768, 192)),
    ("adaptformer", dict(width=None, reduction=8, learnable_scale=True), bottleneck_one(768, 96) + 1),
    ("adaptformer", dict(width=None, reduction=16), bottleneck_one(768, 48)),
])
def test_adapter_vit_b_counts(vit_b, name, options, per_block):
    m = adapters.apply(copy.deepcopy(vit_b), name, **options)
    assert adapters.count_trainable(m) == 12 * per_block
    if options.get("placement") == "mlp":
        assert 12 * per_block == 156_768


@pytest.mark.parametrize("options", [dict(targets="qkv"), dict(targets="qkv", fused=True), dict(fused=True)])
def test_lora_counts_tiny(options):
    m = apply("lora", r=4, **options)
    n = len(options.get("targets", "qv"))
    assert adapters.count_trainable(m) == DEPTH * lora_per_block(D, 4, n, options.get("fused", False))


# ------------------------------------------------------------------- VeRA / PVeRA initialisation
def test_pvera_code_init_on_vit_b(vit_b):
    """Issue 9's acceptance: bounds of the paper's code, filled; lambda_d constant per projection
    per block, in (1e-5, 1), not the same in every block; the same seed gives the same tensors."""
    r = 256
    m = adapters.apply(copy.deepcopy(vit_b), "pvera", r=r, init="pvera_code", projection_seed=7)
    S = m.pvera_shared
    a_bound, b_bound = math.sqrt(6 / 512), math.sqrt(6 / 768)  # A: (d, 2r) fan_in 2r; B: (r, d) fan_in d
    assert S.A.shape == (768, 2 * 2 * r) and S.B.shape == (2, r, 768)
    assert S.A.abs().max() <= a_bound and S.B.abs().max() <= b_bound
    assert S.A.max() > 0.99 * a_bound and S.A.min() < -0.99 * a_bound  # filling the interval
    assert S.B.max() > 0.99 * b_bound and S.B.min() < -0.99 * b_bound
    assert abs(S.A.std().item() - a_bound / math.sqrt(3)) < 0.01 * a_bound  # uniform: std = bound / sqrt(3)
    firsts = []
    for L in qkv_layers(m):
        ld = L.lambda_d.detach().view(2, 2 * r)  # q, v
        assert torch.equal(ld, ld[:, :1].expand_as(ld))
        assert ld.min() > 1e-5 and ld.max() < 1
        assert ld[0, 0] != ld[1, 0]
        firsts.append(ld[0, 0].item())
        assert torch.count_nonzero(L.lambda_b) == 0
    assert len(set(firsts)) == 12
    same = adapters.apply(copy.deepcopy(vit_b), "pvera", r=r, init="pvera_code", projection_seed=7)
    assert torch.equal(same.pvera_shared.A, S.A) and torch.equal(same.pvera_shared.B, S.B)
    assert all(torch.equal(a.lambda_d, b.lambda_d) for a, b in zip(qkv_layers(m), qkv_layers(same)))
    other = adapters.apply(copy.deepcopy(vit_b), "pvera", r=r, init="pvera_code", projection_seed=8)
    assert not torch.equal(other.pvera_shared.A, S.A)
    assert not torch.equal(qkv_layers(other)[0].lambda_d, qkv_layers(m)[0].lambda_d)


def test_peft_init_on_vit_b(vit_b):
    r = 256
    m = adapters.apply(copy.deepcopy(vit_b), "pvera", r=r, init="peft", projection_seed=7)
    S = m.pvera_shared
    a_bound, b_bound = math.sqrt(6 / 768), math.sqrt(6 / r)  # PEFT: A (2r, d) fan_in d, B (d, r) fan_in r
    assert S.A.abs().max() <= a_bound and S.A.max() > 0.99 * a_bound
    assert S.B.abs().max() <= b_bound and S.B.max() > 0.99 * b_bound
    assert all(torch.equal(L.lambda_d, torch.full((4 * r,), 0.1)) for L in qkv_layers(m))


def test_vera_pvera_code_bounds():
    r = 16
    m = apply("vera", r=r, projection_seed=3)  # init defaults to pvera_code
    S = m.vera_shared
    assert S.A.shape == (D, 2 * r) and S.A.abs().max() <= math.sqrt(6 / r) and S.A.max() > 0.9 * math.sqrt(6 / r)
    assert S.B.abs().max() <= math.sqrt(6 / D) and S.B.max() > 0.9 * math.sqrt(6 / D)
    for L in qkv_layers(m):
        ld = L.lambda_d.view(2, r)
        assert torch.equal(ld, ld[:, :1].expand_as(ld)) and 1e-5 < ld.min() and ld.max() < 1


@pytest.mark.parametrize("name", ["vera", "pvera"])
def test_without_projection_seed_the_runs_seed_draws(name):
    """projection_seed=null: projections and lambda_d come from the global RNG the run seeds."""
    base = tiny_vit(frozen=True)  # (seeds the global RNG itself: built first)

    def draw(seed):
        torch.manual_seed(seed)
        m = adapters.apply(copy.deepcopy(base), name, r=8)
        return getattr(m, f"{name}_shared").A, qkv_layers(m)[1].lambda_d
    a0, l0 = draw(5)
    a1, l1 = draw(5)
    a2, l2 = draw(6)
    assert torch.equal(a0, a1) and torch.equal(l0, l1)
    assert not torch.equal(a0, a2) and not torch.equal(l0, l2)


@pytest.mark.parametrize("init", ["pvera_code", "peft"])
def test_lambda_d_init_replaces_the_inits_value(init):
    m = apply("pvera", r=8, init=init, lambda_d_init=0.5, projection_seed=0)
    assert all(torch.equal(L.lambda_d, torch.full((32,), 0.5)) for L in qkv_layers(m))


# ------------------------------------------------------------------------------------- LoRA
def _lora_reference(layer, x):
    """The update by hand from the layer's tensors: base(x) + scale * x A_k B_k on each target."""
    out = thirds(layer.base(x)).clone()
    n, r = len(layer.ks), layer.r
    for i, k in enumerate(layer.ks):
        a = layer.lora_A if layer.fused else layer.lora_A[:, i * r:(i + 1) * r]
        out[..., k, :] += (x @ a @ layer.lora_B[i]) * layer.scale
    return out


@pytest.mark.parametrize("options", [dict(targets="qkv"), dict(targets="qkv", fused=True), dict(fused=True),
                                     dict(targets="qkv", fused=True, init="noah")])
def test_lora_variants_by_hand_merge_and_grads(options):
    m = apply("lora", r=4, alpha=6.0, **options)
    perturb(m, seed=2)
    layer, x = qkv_layers(m)[0], tokens(3)
    with torch.no_grad():
        ref = _lora_reference(layer, x)
        torch.testing.assert_close(thirds(layer(x)), ref, rtol=1e-5, atol=1e-6)
        if "k" in options.get("targets", "qv"):
            assert not torch.allclose(ref[..., 1, :], thirds(layer.base(x))[..., 1, :])
        else:
            assert torch.equal(thirds(layer(x))[..., 1, :], thirds(layer.base(x))[..., 1, :])
    # merged == unmerged; unmerge restores bit for bit
    w0 = layer.base.weight.clone()
    with torch.no_grad():
        before = m(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
        adapters.merge(m)
        after = m(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
        adapters.unmerge(m)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    assert torch.equal(layer.base.weight, w0)
    # the fused in-place path has the gradients of the generic (autograd) path
    w = torch.randn(2, 5, 3 * D, generator=torch.Generator().manual_seed(4))
    (layer(x) * w).sum().backward()
    ga, gb = layer.lora_A.grad.clone(), layer.lora_B.grad.clone()
    layer.zero_grad()
    (QVAdapter.add_updates(layer, x, layer.base(x)) * w).sum().backward()
    torch.testing.assert_close(ga, layer.lora_A.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gb, layer.lora_B.grad, rtol=1e-4, atol=1e-6)


def test_lora_inits():
    m = apply("lora", r=64, init="pvera_code")
    a = torch.cat([L.lora_A.flatten() for L in qkv_layers(m)])
    assert abs(a.std().item() - 1 / 8) < 0.01 and all(torch.count_nonzero(L.lora_B) == 0 for L in qkv_layers(m))
    m = apply("lora", r=64, init="noah", targets="qkv", fused=True)
    for t in ("lora_A", "lora_B"):
        v = torch.cat([getattr(L, t).flatten() for L in qkv_layers(m)])
        assert abs(v.std().item() - 0.02) < 0.002 and v.abs().max() < 0.2
    m = apply("lora", r=4)
    assert all(L.lora_A.abs().max() <= 1 / math.sqrt(D) for L in qkv_layers(m))


def test_lora_dropout_in_training_only_and_merge_in_eval():
    m = apply("lora", r=4, dropout=0.5, targets="qkv")
    perturb(m, seed=1)
    layer, x = qkv_layers(m)[0], tokens(5)
    plain = apply("lora", r=4, targets="qkv")
    plain.load_state_dict(m.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(layer(x), qkv_layers(plain)[0](x))  # eval: no dropout
        layer.train()
        torch.manual_seed(0)
        y1 = layer(x)
        torch.manual_seed(1)
        y2 = layer(x)
        assert not torch.allclose(y1, y2)  # training: a fresh mask each forward
        layer.eval()
        ref = m(torch.ones(1, 3, 32, 32))
        adapters.merge(m)
        torch.testing.assert_close(m(torch.ones(1, 3, 32, 32)), ref, rtol=1e-4, atol=1e-5)
    m.train()
    with pytest.raises(RuntimeError, match="unmerge before training"):
        m(torch.ones(1, 3, 32, 32))
    adapters.unmerge(m)


# ------------------------------------------------------------------- AdaptFormer / bottleneck
def test_reduction_gives_the_width():
    m = apply("adaptformer", width=None, reduction=3)
    assert m.blocks[0].mlp.adapter.down.out_features == int(D / 3) == 10
    m = apply("bottleneck", width=None, reduction=8)
    assert m.blocks[0].attn.adapter.down.out_features == 4


def test_adaptformer_learnable_scale_trains_from_its_initial_value():
    m = apply("adaptformer", width=8, scale=1.0, learnable_scale=True, init="pytorch").train()
    s = m.blocks[0].mlp.scale
    assert isinstance(s, torch.nn.Parameter) and s.requires_grad and torch.equal(s.detach(), torch.ones(1))
    assert torch.count_nonzero(m.blocks[0].mlp.adapter.up.weight) > 0  # nn.Linear's init, not zero
    m(torch.randn(2, 3, 32, 32)).sum().backward()
    assert s.grad is not None and s.grad.abs().item() > 0
    fixed = apply("adaptformer", width=8)
    assert fixed.blocks[0].mlp.scale == 0.1 and adapters.count_trainable(fixed) == DEPTH * bottleneck_one(D, 8)


def test_adaptformer_output_by_hand():
    m = apply("adaptformer", width=8, scale=0.7, learnable_scale=True, activation="gelu")
    perturb(m, seed=3)
    frozen = tiny_vit(frozen=True)
    blk, ref_blk = m.blocks[0], frozen.blocks[0]
    x = tokens(1)
    ad = blk.mlp.adapter
    with torch.no_grad():
        want = ref_blk.mlp(ref_blk.norm2(x)) + ad.up(torch.nn.functional.gelu(ad.down(x))) * blk.mlp.scale
        torch.testing.assert_close(blk.mlp(x), want)


def test_bottleneck_noah_form():
    m = apply("bottleneck", width=4, placement="mlp", activation="quick_gelu", init="noah", dropout=0.1)
    blk = m.blocks[0]
    assert not isinstance(blk.attn, adapters.AdapterLayer) and isinstance(blk.mlp, adapters.AdapterLayer)
    ad = blk.mlp.adapter
    assert torch.count_nonzero(ad.up.weight) > 0 and torch.count_nonzero(ad.up.bias) == 0
    x = tokens(2)
    with torch.no_grad():
        y = blk.mlp.module(x)
        h = ad.down(y)
        torch.testing.assert_close(blk.mlp(x), y + ad.up(h * torch.sigmoid(1.702 * h)))
    assert adapters.count_trainable(m) == DEPTH * bottleneck_one(D, 4)
    assert HIDDEN == 4 * D


# --------------------------------------------------------------------------- bad values
@pytest.mark.parametrize("name, options, match", [
    ("lora", dict(targets="qk"), r"adapter.targets='qk'.*qv, qkv"),
    ("lora", dict(init="kaiming"), r"adapter.init='kaiming'.*peft, pvera_code, noah"),
    ("lora", dict(dropout=1.0), r"adapter.dropout=1.0.*>= 0 and < 1"),
    ("lora", dict(r=0), r"adapter.r=0"),
    ("vera", dict(init="paper"), r"adapter.init='paper'.*pvera_code, peft"),
    ("pvera", dict(init="paper"), r"adapter.init='paper'.*pvera_code, peft"),
    ("pvera", dict(lambda_d_init="big"), r"adapter.lambda_d_init='big'"),
    ("adaptformer", dict(reduction=4), r"exactly one of adapter.width and adapter.reduction"),
    ("adaptformer", dict(width=None), r"exactly one of adapter.width and adapter.reduction"),
    ("adaptformer", dict(activation="tanh"), r"adapter.activation='tanh'.*gelu, relu, quick_gelu"),
    ("adaptformer", dict(learnable_scale="yes"), r"adapter.learnable_scale='yes'"),
    ("bottleneck", dict(placement="attn"), r"adapter.placement='attn'.*attn_mlp, mlp"),
    ("bottleneck", dict(width=None, reduction=-2), r"adapter.reduction=-2"),
    ("bottleneck", dict(width=0), r"adapter.width=0"),
])
def test_bad_option_values_say_what_is_valid(name, options, match):
    with pytest.raises(AdapterOptionError, match=match):
        apply(name, **options)


def test_adaptformer_inside_layer_scale_as_the_pvera_code():
    """With DINOv2's layer scale (gamma), the PVeRA code computes ls2(mlp(norm2(x)) + s * adapter(x))."""
    def vit():
        torch.manual_seed(0)
        m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                              embed_dim=D, depth=1, num_heads=2, init_values=0.5)
        return m.eval()
    inside = adapters.apply(vit(), "adaptformer", width=4, init="pytorch", inside_layer_scale=True).eval()
    outside = adapters.apply(vit(), "adaptformer", width=4, init="pytorch").eval()
    outside.load_state_dict(inside.state_dict())
    blk, x = inside.blocks[0], tokens(6)
    m = blk.mlp
    with torch.no_grad():
        gamma = m.ls.gamma
        torch.testing.assert_close(m(x), (m.mlp(m.norm(x)) + m.adapter(x) * m.scale) * gamma)
        torch.testing.assert_close(outside.blocks[0].mlp(x), m.mlp(m.norm(x)) * gamma + m.adapter(x) * m.scale)
