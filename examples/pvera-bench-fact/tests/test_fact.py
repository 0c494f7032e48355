"""FacT-TT and FacT-TK against the source's formulas (JieShibo/PETL-ViT, FacT/fact_tt.py and
FacT/fact_tk.py, ``fact_forward_attn`` / ``fact_forward_mlp``), written out here block by block on
the same tensors, and their parameter counts at ViT-B/16's shape."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from timm.models.vision_transformer import VisionTransformer

from pvera_bench import adapters

PACKAGE = Path(__file__).resolve().parents[1] / "pvera_bench_fact"


def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=16, patch_size=8, embed_dim=24, depth=3, num_heads=2, num_classes=0,
                             drop_path_rate=0.0).double().eval()


def randomise(model: torch.nn.Module) -> None:
    """Every trainable tensor (U, V, the cores) random and non-zero, so that every term counts."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


def source_attention(attn, x, f, s, cores):
    """fact_forward_attn: qkv(x) + cat(V(core_q(U x)), ...) * s; softmax attention; proj + V(core_o(U y)) * s."""
    B, N, C = x.shape
    qkv = attn.qkv.base(x) + torch.cat([f.v(cores[k](f.u(x))) for k in range(3)], dim=2) * s
    qkv = qkv.reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    a = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1)
    y = (a @ v).transpose(1, 2).reshape(B, N, C)
    return attn.proj.base(y) + f.v(cores[3](f.u(y))) * s


def source_mlp(mlp, x, f, s, r, fc1_core, fc2_core):
    """fact_forward_mlp: fc1 + V(core_fc1(U x) as 4 x r) * s; act; fc2 + V(core_fc2(U (4 x C) as 4r)) * s."""
    B, N, C = x.shape
    h = mlp.fc1.base(x) + f.v(fc1_core(f.u(x)).reshape(B, N, 4, r)).reshape(B, N, 4 * C) * s
    x = mlp.act(h)
    h = mlp.fc2.base(x)
    return h + f.v(fc2_core(f.u(x.reshape(B, N, 4, C)).reshape(B, N, 4 * r))) * s


def tt_cores(blk):
    """The source's per-block nn.Linear cores (q_FacTs, k_FacTs, v_FacTs, proj_FacTs, fc1_FacTs, fc2_FacTs)."""
    t = blk.attn.qkv.t
    return [t[0], t[1], t[2], blk.attn.proj.t], blk.mlp.fc1.t, blk.mlp.fc2.t


def tk_cores(f, i, r):
    """fact_tk.py: FacTc @ FacTp[:, idx:idx+4] (attention, idx = 12 i), FacTc @ FacTp[:, idx:idx+8] (MLP, idx + 4)."""
    a = f.c @ f.p[:, 12 * i: 12 * i + 4]
    m = f.c @ f.p[:, 12 * i + 4: 12 * i + 12]
    fc1 = m[:, :, :4].reshape(r, 4 * r)
    fc2 = m[:, :, 4:].reshape(r, 4 * r)
    return [(lambda h, k=k: h @ a[:, :, k]) for k in range(4)], (lambda h: h @ fc1), (lambda h: h @ fc2.t())


@pytest.mark.parametrize("name,r,s", [("fact_tt", 4, 0.7), ("fact_tk", 5, 1.3)])
def test_forward_equals_the_source_formulas(name, r, s):
    model = adapters.apply(tiny_vit(), name, r=r, scale=s).double().eval()
    randomise(model)
    f = model.fact
    assert f.v.weight.abs().min() > 0 and f.u.weight.abs().min() > 0
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model.forward_features(x)
        t = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        for i, blk in enumerate(model.blocks):
            attn_cores, fc1, fc2 = tt_cores(blk) if name == "fact_tt" else tk_cores(f, i, r)
            t = t + source_attention(blk.attn, blk.norm1(t), f, s, attn_cores)
            t = t + source_mlp(blk.mlp, blk.norm2(t), f, s, r, fc1, fc2)
        theirs = model.norm(t)
        frozen = tiny_vit().forward_features(x)
    assert (ours - theirs).abs().max().item() <= 1e-10
    assert (ours - frozen).abs().max().item() > 1e-3  # the updates count


@pytest.mark.parametrize("name", ["fact_tt", "fact_tk"])
def test_identity_at_initialisation(name):
    """V starts at zero (the source's nn.init.zeros_(FacTv.weight)): the model is the frozen one."""
    model = adapters.apply(tiny_vit(), name, r=4).double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), tiny_vit().forward_features(x))


def vit_b16() -> VisionTransformer:
    return VisionTransformer(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, num_classes=0)


def tt_count(r: int, d: int = 768, blocks: int = 12) -> int:
    return 2 * d * r + blocks * (4 * r * r + 4 * r * r + 4 * r * r)  # U, V; q, k, v, o (r x r), fc1 (r x 4r), fc2 (4r x r)


def tk_count(r: int, d: int = 768, blocks: int = 12) -> int:
    return 2 * d * r + r * 12 * blocks + r ** 3  # U, V; P (r x 12L: the source's 144 at 12 blocks); C (r x r x r)


@pytest.mark.parametrize("name,count,ranks", [("fact_tt", tt_count, (4, 8, 16)), ("fact_tk", tk_count, (16, 32))])
def test_vit_b16_counts_by_formula(name, count, ranks):
    for r in ranks:
        model = adapters.apply(vit_b16(), name, r=r)
        assert adapters.count_trainable(model) == count(r), (name, r)
    assert tk_count(32) == 86_528 and tt_count(8) == 21_504  # e.g. TK r = 32: 49,152 + 4,608 + 32,768


def per_task_ranks(name: str) -> list[int]:
    table = yaml.safe_load((PACKAGE / "configs" / "recipe_adapter" / "fact" / f"{name}.yaml").read_text())
    return [v["r"] for v in table["per_task"].values()]


def test_the_published_params_are_fact_tk_at_the_source_ranks():
    """Over the 19 tasks at the source's ranks (configs/tt|tk/<task>.yaml): FacT-TT 39,734 and FacT-TK
    68,985 on average; V-PETL-Bench prints 0.07M for its FacT row, FacT-TK's."""
    tt = per_task_ranks("fact_tt")
    tk = per_task_ranks("fact_tk")
    assert len(tt) == len(tk) == 19 and max(tt) == 16 and max(tk) == 32
    assert round(sum(map(tt_count, tt)) / 19) == 39_734
    assert round(sum(map(tk_count, tk)) / 19) == 68_985
    ref = yaml.safe_load((PACKAGE / "references" / "vpetl_fact.yaml").read_text())
    (row,) = ref["rows"]
    printed = float(re.fullmatch(r"([\d.]+)M", row["params"]).group(1))
    assert row["adapter"] == "fact_tk" and round(sum(map(tk_count, tk)) / 19 / 1e6, 2) == printed
    assert round(sum(map(tt_count, tt)) / 19 / 1e6, 2) != printed
