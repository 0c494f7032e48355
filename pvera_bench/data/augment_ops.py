"""The tensor side of :mod:`.augment` (see its docstring): ``Augment(spec)`` on uint8 NHWC batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .augment import OPS, RandAugmentSpec, parse

__all__ = ["Augment", "apply_ops", "rand_augment_layer"]

FILL = (124.0, 116.0, 104.0)  # timm create_transform: img_mean = round(255 * IMAGENET_DEFAULT_MEAN)
LEVEL_DENOM = 10.0  # timm auto_augment.py _LEVEL_DENOM


class Augment:
    """``Augment(spec)(images)``: uint8 NHWC -> augmented uint8 NHWC, on the images' device."""

    def __init__(self, spec: str | None) -> None:
        self.spec = spec
        self.hflip, self.ra = parse(spec)

    def __bool__(self) -> bool:
        return self.hflip or self.ra is not None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not self:
            return images
        x = images.permute(0, 3, 1, 2)  # NCHW view
        if self.hflip:
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if self.ra is not None:
            x = x.float()
            for _ in range(self.ra.num_layers):
                x = rand_augment_layer(x, self.ra)
            x = x.to(torch.uint8)
        return x.permute(0, 2, 3, 1)


def _u8(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp_(0, 255)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Pillow's RGB -> L: (299 R + 587 G + 114 B) / 1000, rounded; (B, 1, H, W)."""
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return _u8((x * w).sum(1, keepdim=True))


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Pillow's ImageEnhance: degenerate + factor * (image - degenerate)."""
    return _u8(degenerate + factor * (x - degenerate))


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    scale = torch.where(hi > lo, 255.0 / (hi - lo).clamp_min(1), torch.ones_like(hi))
    return torch.where(hi > lo, _u8((x - lo) * scale), x)


def _equalize(x: torch.Tensor) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as TF

    return TF.equalize(x.to(torch.uint8)).float()


def _sharpen_degenerate(x: torch.Tensor) -> torch.Tensor:
    """Pillow's SMOOTH filter (3x3, centre 5, others 1, / 13); the border keeps the original.
    (The 3x3 window sum as two separable slice sums: a depthwise conv2d is ~20x slower on CPU.)"""
    rows = x[..., :, :-2] + x[..., :, 1:-1] + x[..., :, 2:]
    window = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]
    smooth = _u8((window + 4.0 * x[..., 1:-1, 1:-1]) / 13.0)
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = smooth
    return out


def _affine(x: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
    """Pillow's ``Image.transform(AFFINE)``: output pixel centre (u, v) samples the input at
    ``mat @ (u, v, 1)`` (pixel coordinates), bicubic; points outside the input get the fill."""
    b, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=x.dtype) + 0.5,
                            torch.arange(w, device=x.device, dtype=x.dtype) + 0.5, indexing="ij")
    uv1 = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, h * w, 3)
    src = (uv1 @ mat.transpose(1, 2)).view(b, h, w, 2)  # input pixel coordinates
    grid = torch.stack([src[..., 0] * (2.0 / w) - 1.0, src[..., 1] * (2.0 / h) - 1.0], -1)
    out = F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False)
    inside = ((src[..., 0] >= 0) & (src[..., 0] < w) & (src[..., 1] >= 0) & (src[..., 1] < h)).unsqueeze(1)
    fill = torch.tensor(FILL, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return _u8(torch.where(inside, out, fill))


def rand_augment_layer(x: torch.Tensor, ra: RandAugmentSpec) -> torch.Tensor:
    """One RandAugment layer on float NCHW images in [0, 255] (uint8 values)."""
    b, dev, dt = x.shape[0], x.device, x.dtype
    op = torch.randint(len(OPS), (b,), device=dev)
    apply = torch.rand(b, device=dev) < ra.prob  # timm AugmentOp: skipped when random() > prob
    mag = torch.full((b,), float(ra.magnitude), device=dev, dtype=dt)
    if ra.magnitude_std > 0:
        mag = mag + ra.magnitude_std * torch.randn(b, device=dev, dtype=dt)
    level = mag.clamp(0.0, LEVEL_DENOM) / LEVEL_DENOM  # in [0, 1]
    sign = torch.where(torch.rand(b, device=dev) > 0.5, -1.0, 1.0).to(dt)  # timm _randomly_negate
    return apply_ops(x, torch.where(apply, op, -1), level, sign)


def apply_ops(x: torch.Tensor, op: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Image i gets op ``OPS[op[i]]`` (none where ``op[i] < 0``) at ``level[i]`` (magnitude / 10)
    with ``sign[i]`` (+-1) for the signed ops; float NCHW in [0, 255] in and out.

    The images are grouped by op (a stable sort on the device and one host synchronisation for
    the group sizes), and each op runs once, batched, on its own group."""
    op = torch.where(op < 0, len(OPS), op)
    order = torch.argsort(op, stable=True)
    sizes = torch.bincount(op, minlength=len(OPS) + 1).tolist()  # the one host synchronisation
    xs, ls, ss = x[order], level[order], sign[order]
    parts, start = [], 0
    for k, n in enumerate(sizes):
        seg = xs[start:start + n]
        if n and k < len(OPS):
            seg = OP_FNS[OPS[k]](seg, ls[start:start + n], ss[start:start + n])
        parts.append(seg)
        start += n
    out = torch.empty_like(x)
    out[order] = torch.cat(parts)
    return out


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _geometric(kind: str):
    """An op building each image's affine (output -> input pixel coordinates, Pillow's convention)."""
    def fn(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        mat = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
        mat[:, 0, 0] = mat[:, 1, 1] = 1.0
        if kind == "Rotate":  # _rotate_level_to_arg: 30 degrees; Pillow's rotate turns counter-clockwise
            a = -torch.deg2rad(level * 30.0 * sign)
            c, s = torch.cos(a), torch.sin(a)
            cx, cy = w / 2.0, h / 2.0
            mat = torch.stack([torch.stack([c, s, cx - c * cx - s * cy], -1),
                               torch.stack([-s, c, cy + s * cx - c * cy], -1)], 1)
        elif kind == "ShearX":  # _shear_level_to_arg: 0.3; affine (1, f, 0, 0, 1, 0)
            mat[:, 0, 1] = level * 0.3 * sign
        elif kind == "ShearY":  # (1, 0, 0, f, 1, 0)
            mat[:, 1, 0] = level * 0.3 * sign
        elif kind == "TranslateXRel":  # _translate_rel_level_to_arg: translate_pct 0.45 of the width
            mat[:, 0, 2] = level * 0.45 * sign * w
        else:  # TranslateYRel
            mat[:, 1, 2] = level * 0.45 * sign * h
        return _affine(x, mat)
    return fn


def _enhance(degenerate):
    """Pillow's ImageEnhance with _enhance_increasing_level_to_arg's factor max(0.1, 1 +- 0.9 level)."""
    def fn(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        return _blend(degenerate(x), x, _col((1.0 + level * 0.9 * sign).clamp_min(0.1)))
    return fn


def _posterize(x, level, sign):  # _posterize_increasing_level_to_arg: keep 4 -> 0 bits
    step = _col(torch.pow(2.0, 4 + torch.floor(level * 4)))
    return torch.floor(x / step) * step


def _solarize(x, level, sign):  # _solarize_increasing_level_to_arg: threshold 256 -> 0
    return torch.where(x < _col(256 - torch.floor(level * 256)), x, 255.0 - x)


def _solarize_add(x, level, sign):  # _solarize_add_level_to_arg: add 0 -> 110 below 128
    return torch.where(x < 128, (x + _col(torch.clamp(torch.floor(level * 110), max=128))).clamp(max=255), x)


OP_FNS = {
    "AutoContrast": lambda x, level, sign: _autocontrast(x),
    "Equalize": lambda x, level, sign: _equalize(x),
    "Invert": lambda x, level, sign: 255.0 - x,
    "Rotate": _geometric("Rotate"),
    "PosterizeIncreasing": _posterize,
    "SolarizeIncreasing": _solarize,
    "SolarizeAdd": _solarize_add,
    "ColorIncreasing": _enhance(_gray),
    "ContrastIncreasing": _enhance(lambda x: torch.floor(_gray(x).mean(dim=(1, 2, 3), keepdim=True) + 0.5)),
    "BrightnessIncreasing": _enhance(torch.zeros_like),
    "SharpnessIncreasing": _enhance(_sharpen_degenerate),
    "ShearX": _geometric("ShearX"),
    "ShearY": _geometric("ShearY"),
    "TranslateXRel": _geometric("TranslateXRel"),
    "TranslateYRel": _geometric("TranslateYRel"),
}
assert tuple(OP_FNS) == OPS
