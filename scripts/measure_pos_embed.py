"""How far timm's DINOv2 position embeddings at 224 px are from the DINOv2 hub model's.

timm resamples the stored 37 x 37 grid (518 px / patch 14) once, at load, to 16 x 16 (bicubic,
antialias=True, to the size); the hub model (facebookresearch/dinov2, used by the PVeRA code)
resamples on every forward, bicubic, antialias=False, scale factor (16 + 0.1) / 37. Measured on
timm's random init of vit_base_patch14_dinov2 (no weights can be downloaded here), and on smooth
synthetic grids:

    PYTHONPATH=. python scripts/measure_pos_embed.py
"""

import math

import timm
import torch

from pvera_bench.backbones import hub_pos_embed


def compare(pe: torch.Tensor, what: str) -> None:
    ours = hub_pos_embed(pe, (16, 16))[:, 1:]
    theirs = timm.layers.resample_abs_pos_embed(pe, (16, 16), num_prefix_tokens=1)[:, 1:]
    d = (ours - theirs).abs()
    rms = ((ours - theirs).pow(2).mean().sqrt() / theirs.pow(2).mean().sqrt()).item()
    print(f"{what:44s} max |diff| {d.max().item():.3e}  mean |diff| {d.mean().item():.3e}  "
          f"mean |timm| {theirs.abs().mean().item():.3e}  relative rms {rms:.1%}")


def main() -> None:
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch14_dinov2", pretrained=False, num_classes=0)  # 518 px: 37 x 37
    assert model.pos_embed.shape == (1, 1 + 37 * 37, 768)
    compare(model.pos_embed.detach(), "timm random init (trunc_normal std .02)")
    ii, jj = torch.meshgrid(torch.arange(37.0), torch.arange(37.0), indexing="ij")
    for cycles in (1, 4):  # smooth and medium-frequency grids, 768 random phases
        ph = torch.rand(2, 768) * 2 * math.pi
        g = torch.sin(2 * math.pi * cycles * ii[..., None] / 37 + ph[0]) * torch.cos(2 * math.pi * cycles * jj[..., None] / 37 + ph[1])
        pe = torch.cat((torch.zeros(1, 768), g.reshape(-1, 768)))[None]
        compare(pe, f"synthetic grid, {cycles} cycle(s) across the image")


if __name__ == "__main__":
    main()
