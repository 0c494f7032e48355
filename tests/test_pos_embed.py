"""backbone.pos_embed=dinov2_hub: position embeddings kept at the native grid and resampled on every
forward as the DINOv2 hub model's interpolate_pos_encoding (facebookresearch/dinov2,
dinov2/models/vision_transformer.py: bicubic, antialias=False, scale_factor (w0 + 0.1) / M)."""

import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from pvera_bench.backbones import BackboneError, create_backbone, hub_pos_embed, input_size

TINY = dict(model="vit_tiny_patch16_224", kwargs=dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2))


def hub_interpolate_pos_encoding(pos_embed, w, h, patch_size):
    """The hub's interpolate_pos_encoding, rebuilt from its source for a square input."""
    N = pos_embed.shape[1] - 1
    M = int(math.sqrt(N))
    w0, h0 = w // patch_size, h // patch_size
    patch = F.interpolate(pos_embed[:, 1:].float().reshape(1, M, M, -1).permute(0, 3, 1, 2), mode="bicubic",
                          antialias=False, scale_factor=(float(w0 + 0.1) / M, float(h0 + 0.1) / M))
    return torch.cat((pos_embed[:, :1], patch.permute(0, 2, 3, 1).reshape(1, -1, pos_embed.shape[-1])), dim=1)


def test_forward_uses_the_hubs_resampling_of_the_native_grid():
    torch.manual_seed(0)
    hub = create_backbone(dict(TINY, pos_embed="dinov2_hub"))
    assert input_size(hub) == 32 and hub.pos_embed.shape[1] == 1 + 28 * 28  # native 224 px / patch 8
    ref = hub_interpolate_pos_encoding(hub.pos_embed, 32, 32, 8)
    assert torch.equal(hub_pos_embed(hub.pos_embed, (4, 4)), ref)
    # the same weights in a plain timm model whose (4 x 4) position embeddings ARE the hub's resampling
    plain = timm.create_model(TINY["model"], pretrained=False, num_classes=0, **TINY["kwargs"])
    state = {k: v for k, v in hub.state_dict().items() if k != "pos_embed"}
    plain.load_state_dict({**state, "pos_embed": ref}, strict=True)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(hub.eval()(x), plain.eval()(x))
    twin = copy.deepcopy(hub)  # the resampling travels with a copy (each candidate's backbone)
    assert twin._pos_embed.__self__ is twin and torch.equal(twin(x), hub(x))


def test_differs_from_timms_resampling_at_load():
    torch.manual_seed(0)
    hub = create_backbone(dict(TINY, pos_embed="dinov2_hub"))
    timm_way = timm.layers.resample_abs_pos_embed(hub.pos_embed, (4, 4), num_prefix_tokens=1)  # antialias=True
    ours = hub_pos_embed(hub.pos_embed, (4, 4))
    assert ours.shape == timm_way.shape and (ours - timm_way).abs().max() > 1e-3


def test_bad_value_is_one_line():
    with pytest.raises(BackboneError, match="backbone.pos_embed='x' is not valid"):
        create_backbone(dict(TINY, pos_embed="x"))
