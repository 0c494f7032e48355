"""Frozen timm ViT backbones, weights from the Hugging Face Hub or from a local file, and the
classifier that wraps one: uint8 images in, normalised on the device, pooled feature, a head."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

import torch
from torch import nn

from .truncnormal import trunc_normal_timm054_


class BackboneError(RuntimeError):
    """Weights that cannot be had (offline, missing or corrupt file): the message says what to do."""


def _hub_weights_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    for fname in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        hit = try_to_load_from_cache(repo_id, fname)
        if isinstance(hit, str) and os.path.isfile(hit):
            return True
    return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _check_hub_weights(model_name: str, backbone_name: str) -> None:
    """Fail in seconds, not after a minute of retries, when hub weights cannot be had."""
    from timm.models import get_pretrained_cfg

    pcfg = get_pretrained_cfg(model_name)
    repo = getattr(pcfg, "hf_hub_id", None) if pcfg is not None else None
    if not repo or _hub_weights_cached(repo) or _hub_reachable():
        return
    raise BackboneError(
        f"backbone {backbone_name!r} needs the pretrained weights of timm model {model_name!r} "
        f"(Hugging Face Hub repo {repo!r}), which are not in the local Hugging Face cache, and the Hub "
        f"cannot be reached. Download them on a machine with internet "
        f"(python -c \"import timm; timm.create_model('{model_name}', pretrained=True)\") and copy the "
        f"Hugging Face cache over, or pass a local file: backbone.checkpoint=/path/to/model.safetensors"
    )


def _normalisation(cfg: Mapping, key: str) -> tuple[float, float, float] | None:
    """``backbone.mean`` / ``backbone.std``: null (the weights' own) or three numbers (std > 0)."""
    value = cfg.get(key)
    if value is None:
        return None
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        vals = ()
    if len(vals) != 3 or any(v != v for v in vals) or (key == "std" and min(vals) <= 0):
        what = "three positive numbers" if key == "std" else "three numbers"
        raise BackboneError(f"backbone.{key}={value!r} is not valid; give {what} (one per RGB channel, on the "
                            f"0-1 scale, e.g. [0.485,0.456,0.406]) or null for the weights' own")
    return vals


def _drop_path_rate(cfg: Mapping) -> float:
    value = cfg.get("drop_path_rate") or 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise BackboneError(f"backbone.drop_path_rate={value!r} is not valid; give a number in [0, 1) "
                            f"(stochastic depth of the last block; timm's linear rule over the blocks)")
    return float(value)


POS_EMBEDS = ("timm", "dinov2_hub")
HUB_INTERPOLATE_OFFSET = 0.1  # facebookresearch/dinov2 dinov2/hub/backbones.py: interpolate_offset=0.1 (vitb14)


def hub_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix: int = 1) -> torch.Tensor:
    """The DINOv2 hub model's ``interpolate_pos_encoding`` (facebookresearch/dinov2,
    dinov2/models/vision_transformer.py): the stored M x M grid resampled bicubic, without
    antialiasing, with the scale factor ``(grid + 0.1) / M`` (not the size), in float32."""
    prefix, patch = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:].float()
    n, dim = patch.shape[1], patch.shape[2]
    m = int(round(n ** 0.5))
    if (m, m) == tuple(grid):
        return pos_embed
    sh, sw = (float(g + HUB_INTERPOLATE_OFFSET) / m for g in grid)
    out = nn.functional.interpolate(patch.reshape(1, m, m, dim).permute(0, 3, 1, 2), mode="bicubic",
                                    antialias=False, scale_factor=(sh, sw))
    if tuple(out.shape[-2:]) != tuple(grid):
        raise BackboneError(f"position embeddings: the hub's resampling of a {m}x{m} grid gave "
                            f"{tuple(out.shape[-2:])}, not {tuple(grid)}")
    out = out.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((prefix.float(), out), dim=1).to(pos_embed.dtype)


def _use_hub_pos_embed(model: nn.Module, img_size: int) -> None:
    """Keep ``model``'s position embeddings at its native grid (DINOv2: 518 px, 37 x 37) and resample
    them to the input's grid on every forward, as the DINOv2 hub model does (:func:`hub_pos_embed`);
    timm resamples once, at load (bicubic with antialiasing, to the size)."""
    pe = model.patch_embed
    if model.no_embed_class or model.reg_token is not None or getattr(model, "dynamic_img_size", False):
        raise BackboneError("backbone.pos_embed=dinov2_hub needs a ViT with a class token's position embedding "
                            "and no registers (the DINOv2 hub models vit*14)")
    patch = pe.patch_size[0]
    pe.img_size = (img_size, img_size)
    pe.grid_size = (img_size // patch, img_size // patch)
    pe.num_patches = pe.grid_size[0] * pe.grid_size[1]

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return self.pos_drop(x + hub_pos_embed(self.pos_embed, self.patch_embed.grid_size, self.num_prefix_tokens))

    model._pos_embed = _pos_embed.__get__(model)
PACKAGE_PREFIX = "package:"  # backbone.checkpoint=package:weights/x.safetensors: a file shipped inside pvera_bench


def checkpoint_path(checkpoint: str) -> Path:
    """The file ``backbone.checkpoint`` names: ``package:REL`` is REL inside the installed package
    (so the resume key holds the same string on every machine), anything else a local path."""
    text = str(checkpoint)
    if text.startswith(PACKAGE_PREFIX):
        return Path(__file__).resolve().parent / text[len(PACKAGE_PREFIX):]
    return Path(os.path.expanduser(text))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_weights(cfg: Mapping) -> None:
    """That the weights backbone config ``cfg`` names can be had, before anything is built: a
    ``checkpoint`` file that exists (with its ``checkpoint_sha256`` when given), or ``pretrained``
    hub weights in the local cache or a reachable Hub. Raises :class:`BackboneError` (one line)."""
    model_name, name, checkpoint = cfg["model"], cfg.get("name", cfg["model"]), cfg.get("checkpoint")
    if checkpoint:
        path = checkpoint_path(checkpoint)
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "does not exist"
            raise BackboneError(f"backbone.checkpoint={checkpoint} {what}; pass the path of a "
                                f"weights file for timm model {model_name!r} (.safetensors or .pth)")
        want = cfg.get("checkpoint_sha256")
        if want and (got := sha256_file(path)) != str(want).lower():
            raise BackboneError(f"backbone.checkpoint={checkpoint} has sha256 {got}, not the {want} that backbone "
                                f"{name!r} expects; restore the file (reinstall the package for a shipped one) or "
                                f"set backbone.checkpoint_sha256 to the file's checksum")
    elif cfg.get("pretrained", False):
        _check_hub_weights(model_name, name)


def create_backbone(cfg: Mapping) -> nn.Module:
    """A timm model without its classifier (``num_classes=0``), every weight frozen.

    ``cfg`` holds ``name``, ``model`` (the timm name and tag), ``pretrained``, ``checkpoint``
    (a local ``.safetensors``/``.pth`` file that replaces the hub download, or ``package:REL``, a
    file shipped in the package), ``checkpoint_sha256`` (if set, the file's sha256 must equal it), ``kwargs``,
    ``drop_path_rate`` (stochastic depth in training, timm's rule: 0 in the first block rising
    linearly to this in the last), ``mean`` / ``std`` (the input normalisation, on the 0-1
    scale; null keeps the weights' own, which :class:`Classifier` reads from ``pretrained_cfg``) and
    ``pos_embed``: ``timm`` (resampled once, at load, to ``kwargs.img_size``) or ``dinov2_hub`` (kept
    at the weights' native grid and resampled on every forward as the DINOv2 hub model does).
    """
    import timm

    kwargs = dict(cfg.get("kwargs") or {})
    model_name = cfg["model"]
    pretrained = bool(cfg.get("pretrained", False))
    checkpoint = cfg.get("checkpoint")
    overlay = {k: v for k in ("mean", "std") if (v := _normalisation(cfg, k)) is not None}
    dpr = _drop_path_rate(cfg)
    if dpr:
        kwargs["drop_path_rate"] = dpr
    check_weights(cfg)
    if checkpoint:
        overlay["file"] = str(checkpoint_path(checkpoint))
        pretrained = True
    if overlay:
        kwargs["pretrained_cfg_overlay"] = overlay
    pos_embed = cfg.get("pos_embed") or "timm"
    if pos_embed not in POS_EMBEDS:
        raise BackboneError(f"backbone.pos_embed={pos_embed!r} is not valid; use one of: {', '.join(POS_EMBEDS)}")
    hub_size = kwargs.pop("img_size", None) if pos_embed == "dinov2_hub" else None
    try:
        model = timm.create_model(model_name, pretrained=pretrained, num_classes=0, **kwargs)
    except Exception as e:  # corrupt or mismatched checkpoint, or a hub failure
        where = f"backbone.checkpoint={checkpoint}" if checkpoint else f"the hub weights of {model_name!r}"
        raise BackboneError(
            f"could not load {where}: {type(e).__name__}: {str(e).splitlines()[0][:300]}. "
            f"Pass a valid weights file for timm model {model_name!r} with backbone.checkpoint=PATH"
        ) from e
    if pos_embed == "dinov2_hub":  # built at its native size (DINOv2: 518), then per-forward resampling
        _use_hub_pos_embed(model, int(hub_size or input_size(model)))
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def input_size(backbone: nn.Module) -> int:
    """The square image size the backbone takes (what the data layer resizes to)."""
    size = backbone.patch_embed.img_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def draw_heads(num_features: int, num_classes: int, n: int) -> None:
    """Draw ``n`` heads from the global RNG and drop them: nn.Linear's own init, as the PVeRA code's
    GridSearchLinearProbe builds one LinearProbe (an nn.Linear) per grid candidate (models/models.py)."""
    for _ in range(int(n)):
        nn.Linear(num_features, int(num_classes))


def rng_after_heads(state: torch.Tensor, num_features: int, num_classes: int, n: int) -> torch.Tensor:
    """The CPU RNG state after ``n`` heads drawn from ``state`` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(state)
        draw_heads(num_features, num_classes, n)
        return torch.get_rng_state()


HEAD_INITS = ("pytorch", "noah", "noah_code")


class Classifier(nn.Module):
    """uint8 NHWC images -> normalise (on the device) -> backbone feature -> linear head."""

    def __init__(self, backbone: nn.Module, num_classes: int, head_init: str = "pytorch", head_draw: int = 0) -> None:
        """``head_init``: ``pytorch`` (nn.Linear's own) or ``noah``: weight truncated normal std 0.02
        (cut at +-2), bias 0, as NOAH's ``reset_classifier`` (ZhangYuanhan-AI/NOAH,
        model/supernet_vision_transformer_timm.py ~551-555), drawn by torch's sampler; ``noah_code``:
        the same, drawn as NOAH's timm 0.5.4 draws it (:mod:`pvera_bench.truncnormal`). ``head_draw``:
        the head is the RNG's ``head_draw``-th head after those of earlier grid candidates (the PVeRA code's
        GridSearchLinearProbe builds one nn.Linear per candidate, in grid order: models/models.py)."""
        super().__init__()
        if head_init not in HEAD_INITS:
            raise BackboneError(f"backbone.head_init={head_init!r} is not valid; use one of: {', '.join(HEAD_INITS)}")
        self.backbone = backbone
        pcfg = getattr(backbone, "pretrained_cfg", None) or {}
        mean = torch.tensor(pcfg.get("mean", (0.5, 0.5, 0.5)), dtype=torch.float32) * 255.0
        std = torch.tensor(pcfg.get("std", (0.5, 0.5, 0.5)), dtype=torch.float32) * 255.0
        self.register_buffer("scale", (1.0 / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", (-mean / std).view(1, 3, 1, 1), persistent=False)
        draw_heads(backbone.num_features, num_classes, head_draw)  # the earlier candidates' heads, dropped
        self.head = nn.Linear(backbone.num_features, int(num_classes))
        if head_init in ("noah", "noah_code"):  # noah_code: drawn as NOAH's timm 0.5.4 (inverse CDF), noah: torch's
            (trunc_normal_timm054_ if head_init == "noah_code" else nn.init.trunc_normal_)(
                self.head.weight, std=0.02, a=-2.0, b=2.0)
            nn.init.zeros_(self.head.bias)

    @property
    def img_size(self) -> int:
        return input_size(self.backbone)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()  # NHWC uint8 -> NCHW (channels-last memory)
        return self.backbone(torch.addcmul(self.shift, x, self.scale))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))
