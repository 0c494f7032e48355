"""NOAH's forms (recipe=noah): the classifier head's init and the Adapter after the MLP branch's
drop path (ZhangYuanhan-AI/NOAH model/supernet_vision_transformer_timm.py)."""

import pytest
import torch
from torch import nn

from pvera_bench import adapters
from pvera_bench.backbones import BackboneError, Classifier

from conftest import tiny_vit


def test_noah_head_is_trunc_normal_with_zero_bias():
    torch.manual_seed(0)
    c = Classifier(tiny_vit(), 10, head_init="noah")
    torch.manual_seed(0)
    tiny_vit()
    nn.Linear(32, 10)  # NOAH's reset_classifier builds the Linear, then re-initialises it
    w = nn.init.trunc_normal_(torch.empty(10, 32), std=0.02, a=-2.0, b=2.0)
    assert torch.equal(c.head.weight, w) and not c.head.bias.any()
    torch.manual_seed(0)
    plain = Classifier(tiny_vit(), 10)
    assert plain.head.bias.abs().max() > 0  # nn.Linear's own: a non-zero bias
    with pytest.raises(BackboneError, match="head_init='x' is not valid"):
        Classifier(tiny_vit(), 10, head_init="x")


def noah_block(blk, x, adapter):
    """NOAH's Block.forward with our block's modules: x + drop_path(attn(norm1(x))), then
    x + adapter(drop_path(mlp(norm2(x)))), the adapter returning ``identity + out``."""
    x = x + blk.drop_path1(blk.attn(blk.norm1(x)))
    y = blk.drop_path2.module(blk.mlp(blk.norm2(x)))
    return x + (y + adapter(y))  # NOAH: AdapterSuper returns identity + out, added to x


def test_adapter_after_the_drop_path_is_noahs_block():
    torch.manual_seed(0)
    vit = tiny_vit(depth=2, drop_path_rate=0.5)
    adapters.apply(vit, "bottleneck", width=4, placement="mlp_after_drop_path", init="noah", dropout=0.1,
                   activation="quick_gelu")
    blk = vit.blocks[1].train()
    with torch.no_grad():  # a trained adapter: large enough for the placement to show
        for p in blk.drop_path2.adapter.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(8, 17, 32)
    torch.manual_seed(1)
    ours = blk(x)
    torch.manual_seed(1)
    ref = noah_block(blk, x, blk.drop_path2.adapter)
    assert torch.equal(ours, ref)
    # inside the drop path (placement mlp) the same draws give another output: the placement matters
    torch.manual_seed(0)
    inside = tiny_vit(depth=2, drop_path_rate=0.5)
    adapters.apply(inside, "bottleneck", width=4, placement="mlp", init="noah", dropout=0.1, activation="quick_gelu")
    inside.blocks[1].mlp.adapter.load_state_dict(blk.drop_path2.adapter.state_dict())
    torch.manual_seed(1)
    assert (inside.blocks[1].train()(x) - ours).abs().max() > 1e-2
    # without drop path (evaluation) the two placements agree
    assert torch.allclose(inside.blocks[1].eval()(x), blk.eval()(x), atol=1e-6)
