"""AdaptFormer's V-PETL-Bench form (adapter.norm_input, adapter.outside_drop_path): counts by formula,
the block's output by hand, and which path the drop path covers."""

import copy

import pytest
import timm
import torch
from torch import nn

from pvera_bench import adapters
from pvera_bench.adapters import AdapterOptionError

from conftest import tiny_vit
from test_adapters import perturb, tokens

VPETL = dict(width=8, scale=1.0, activation="relu", init="noah", dropout=0.1, norm_input=True, outside_drop_path=True)


def test_vit_b_count_with_the_input_layernorm():
    torch.manual_seed(0)
    vit_b = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    m = adapters.apply(copy.deepcopy(vit_b), "adaptformer", **VPETL)
    d, w = 768, 8
    assert adapters.count_trainable(m) == 12 * ((d * w + w) + (w * d + d) + 2 * d) == 175_200


def test_block_by_hand_and_the_drop_path_covers_only_the_frozen_path():
    m = adapters.apply(copy.deepcopy(tiny_vit(frozen=True)), "adaptformer", **VPETL).eval()
    perturb(m, seed=3)
    ref = tiny_vit(frozen=True).blocks[0]
    blk = m.blocks[0]
    assert isinstance(blk.drop_path2, nn.Identity) and blk.mlp.adapter_norm.weight.requires_grad
    with torch.no_grad():
        blk.mlp.adapter_norm.weight.mul_(1.5)
        blk.mlp.adapter_norm.bias.add_(0.2)
    x = tokens(1)
    ad, ln = blk.mlp.adapter, blk.mlp.adapter_norm
    with torch.no_grad():
        y = x + ref.ls1(ref.attn(ref.norm1(x)))
        a = ad.up(torch.relu(ad.down(ln(y))))
        torch.testing.assert_close(blk(x), y + ref.mlp(ref.norm2(y)) + a)
        blk.mlp.drop_path = ZeroPath()  # a drop path that drops: only the adapter's term is left
        torch.testing.assert_close(blk(x), y + a)


class ZeroPath(nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


def test_the_drop_path_moves_with_the_option():
    m = tiny_vit(frozen=True)
    m.blocks[0].drop_path2 = ZeroPath()  # as a block with drop path, dropping
    inside = adapters.apply(copy.deepcopy(m), "adaptformer", width=4, init="pytorch")
    outside = adapters.apply(copy.deepcopy(m), "adaptformer", width=4, init="pytorch", outside_drop_path=True)
    x = tokens(1)
    with torch.no_grad():
        y = x + m.blocks[0].ls1(m.blocks[0].attn(m.blocks[0].norm1(x)))
        torch.testing.assert_close(inside.blocks[0](x), y)  # default: the drop path takes the adapter too
        blk = outside.blocks[0]
        torch.testing.assert_close(blk(x), y + 0.1 * blk.mlp.adapter(y))


def test_layer_scale_and_outside_drop_path_do_not_combine():
    with pytest.raises(AdapterOptionError, match="do not combine"):
        adapters.apply(tiny_vit(frozen=True), "adaptformer", inside_layer_scale=True, outside_drop_path=True)
