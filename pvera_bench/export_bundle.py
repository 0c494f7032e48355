"""What a PEFT export holds besides PEFT's own files, so that a user with timm and PEFT alone (this
package not installed) rebuilds the run's model: where the frozen backbone comes from, the
backbone itself when no hub id names it, the loading code, and a model card (``README.md``).

The frozen backbone is one of three kinds (:func:`base_model`):

- ``hub``: pretrained weights from the Hugging Face Hub, ``base_model_name_or_path`` =
  ``hf-hub:<repo>``, which ``timm.create_model`` resolves itself (offline from the local cache);
- ``local-dir``: a backbone loaded from a file (``backbone.checkpoint``), or any backbone whose
  position embeddings this tool resamples itself (``backbone.pos_embed=dinov2_hub``): saved inside
  the export in timm's own ``local-dir:`` layout (``backbone/config.json`` + ``model.safetensors``,
  timm's ``save_for_hf``; timm 1.x ``_factory.py`` / ``_hub.load_model_config_from_path`` read it),
  with the DINOv2 hub's per-forward resampling baked into ``pos_embed`` for the run's input size,
  so that timm's plain forward computes the run's function; ``base_model_name_or_path`` =
  ``local-dir:backbone``, relative to the export directory;
- ``random``: random weights (``pretrained: false``): the timm model name, drawn by timm after
  ``torch.manual_seed(init_seed)`` as the run drew it (the same torch and timm versions, recorded).

The model card's code (:func:`loading_code`) is the one way to load an export: the export's own
self-check runs it (export.py) and a test runs it in an environment without this package.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .adapters.base import AdapterLayer
from .adapters.qkv import SharedProjections

SELF_CHECK_ATOL = 1e-5  # float32, relative to max(1, |logits|)
BACKBONE_DIR = "backbone"
CARD = "README.md"
META_FILE = "pvera_bench_export.json"


class ExportError(ValueError):
    """An export that cannot be written (no exact PEFT form, a merged model, ...): one line."""


@dataclass
class BaseModel:
    kind: str  # hub | local-dir | random
    name: str  # PEFT's base_model_name_or_path, and what timm.create_model is given
    kwargs: dict[str, Any] = field(default_factory=dict)  # timm keyword arguments (hub, random)
    seed: int | None = None  # random: torch.manual_seed before timm.create_model


def base_model(bb: Mapping[str, Any], backbone: nn.Module, run_seed: int) -> BaseModel:
    """Where the frozen backbone of a run with backbone config ``bb`` comes from (module docstring)."""
    kwargs = dict(bb.get("kwargs") or {})
    if bb.get("checkpoint") or (bb.get("pos_embed") or "timm") != "timm":
        return BaseModel("local-dir", f"local-dir:{BACKBONE_DIR}")
    if bb.get("pretrained") and not bb.get("random_weights"):
        hub = (getattr(backbone, "pretrained_cfg", None) or {}).get("hf_hub_id")
        if hub:
            return BaseModel("hub", f"hf-hub:{hub}", kwargs)
        return BaseModel("local-dir", f"local-dir:{BACKBONE_DIR}")  # pretrained weights without a hub id
    return BaseModel("random", str(bb["model"]), kwargs, int(bb.get("init_seed", run_seed)))


def save_backbone(plain: nn.Module, bb: Mapping[str, Any], out: Path) -> None:
    """``plain`` (our frozen backbone without adapters, ``num_classes=0``) as a fresh timm model in
    timm's ``local-dir:`` layout under ``out``: built from the config's model name and kwargs at the
    run's input size, the DINOv2 hub position embeddings resampled once for that size."""
    import timm
    from timm.models import save_for_hf

    from .backbones import hub_pos_embed, input_size

    size = input_size(plain)
    kwargs = dict(bb.get("kwargs") or {}, img_size=size)
    pcfg = getattr(plain, "pretrained_cfg", None) or {}
    overlay = {k: list(pcfg[k]) for k in ("mean", "std") if k in pcfg}
    fresh = timm.create_model(str(bb["model"]), pretrained=False, num_classes=0, pretrained_cfg_overlay=overlay,
                              **kwargs)
    state = {k: v for k, v in plain.state_dict().items() if not k.startswith("head.")}
    if (bb.get("pos_embed") or "timm") == "dinov2_hub":
        state["pos_embed"] = hub_pos_embed(state["pos_embed"], plain.patch_embed.grid_size, plain.num_prefix_tokens)
    fresh.load_state_dict(state, strict=True)
    save_for_hf(fresh, str(out / BACKBONE_DIR), safe_serialization=True)


def build_lines(base: BaseModel, num_classes: int) -> list[str]:
    """The code that builds timm's ViT with ``num_classes`` outputs (the head PEFT replaces)."""
    def kw(d: Mapping[str, Any]) -> str:
        return "".join(f", {k}={v!r}" for k, v in d.items())

    if base.kind == "local-dir":
        return [f'vit = timm.create_model(f"local-dir:{{export_dir}}/{BACKBONE_DIR}", pretrained=True, '
                f'num_classes={num_classes})']
    if base.kind == "hub":
        return [f'vit = timm.create_model("{base.name}", pretrained=True, num_classes={num_classes}{kw(base.kwargs)})']
    return [f"torch.manual_seed({base.seed})  # the run's random backbone, drawn as the run drew it",
            f'vit = timm.create_model("{base.name}", pretrained=False, num_classes=0{kw(base.kwargs)})',
            f"vit.reset_classifier({num_classes})"]


def loading_code(info: Mapping[str, Any], base: BaseModel) -> tuple[str, str]:
    """``(build, use)``: the model card's code, in two parts (the self-check replaces the first for hub
    weights it cannot download). Together they define ``model`` (PEFT's) and ``logits(images)``."""
    build = "\n".join(["import peft", "import timm", "import torch", "",
                       'export_dir = "."  # the path of this directory', *build_lines(base, info["num_classes"])])
    size = info["img_size"][0]
    use = "\n".join([
        "model = peft.PeftModel.from_pretrained(vit, export_dir).eval()",
        f"mean = torch.tensor({list(info['mean'])}).view(1, 3, 1, 1)",
        f"std = torch.tensor({list(info['std'])}).view(1, 3, 1, 1)",
        "",
        "",
        "def logits(images: torch.Tensor) -> torch.Tensor:",
        f'    """uint8 RGB images, N x {size} x {size} x 3 (resized with {info["resize"]}), to the run\'s logits."""',
        "    x = images.permute(0, 3, 1, 2).float() / 255.0",
        "    return model((x - mean) / std)",
    ])
    return build, use


def card(info: Mapping[str, Any], base: BaseModel) -> str:
    """The export's README.md."""
    build, use = loading_code(info, base)
    size = info["img_size"][0]
    where = {"hub": f"pretrained weights from the Hugging Face Hub (`{base.name}`; offline, timm reads them from "
                    f"the local Hugging Face cache)",
             "local-dir": f"saved in `{BACKBONE_DIR}/` in timm's own `local-dir:` layout (config.json + "
                          f"model.safetensors)" + ("; its position embeddings are resampled once for "
                                                   f"{size} x {size} inputs as the DINOv2 hub model does at "
                                                   f"every forward (backbone.pos_embed=dinov2_hub)"
                                                   if info.get("pos_embed") == "dinov2_hub" else ""),
             "random": f"RANDOM weights: timm's initialisation of `{base.name}` after torch.manual_seed({base.seed}) "
                       f"(reproducible with the same torch and timm versions: {info.get('torch')}, "
                       f"{info.get('timm')})"}[base.kind]
    lines = [
        f"# {info['adapter']} on {info.get('task') or 'a task'} ({info.get('backbone') or info.get('timm_model')}): "
        f"a PEFT {info['peft_type']} adapter for timm's ViT",
        "",
        f"Exported by pvera-bench from `{info.get('run_dir', '')}` (seed {info.get('seed')}). Loading it needs "
        f"torch, timm and peft only (written with PEFT {info['peft_version']}, timm {info.get('timm')}).",
        "",
        f"- Frozen backbone: {where}.",
        f"- Classifier head: {info['num_classes']} classes, in the adapter files (`modules_to_save=['head']`).",
        f"- Input: RGB images resized to {size} x {size} with `{info['resize']}` (the run's evaluation resize; "
        f"its training images used `{info.get('train_resize') or info['resize']}`), scaled to [0, 1], then "
        f"normalised with mean {list(info['mean'])} and std {list(info['std'])}.",
        *([f"- PVeRA inference: `{info['pvera_inference']}` (sample_at_inference="
           f"{info['pvera_inference'] == 'mc'})."] if "pvera_inference" in info else []),
        f"- Checked at export: these files, loaded with the code below, gave the run's logits within "
        f"{info['self_check_max_rel_diff']:.1e} (relative, float32).",
        "",
        "```python",
        build,
        use,
        "```",
        "",
        "`pvera_bench_export.json` records the same facts as data.",
        "",
    ]
    return "\n".join(lines)


def python_block(text: str) -> str:
    """The first ```python block of a model card."""
    return text.split("```python\n", 1)[1].split("```", 1)[0]


def run_code(build: str, use: str, export_dir: Path, vit: nn.Module | None = None) -> dict[str, Any]:
    """Execute the card's code against ``export_dir`` (``vit`` given: instead of the build part);
    returns its namespace (``model``, ``logits``)."""
    ns: dict[str, Any] = {}
    build = build.replace('export_dir = "."', f"export_dir = {str(export_dir)!r}")
    if vit is not None:
        build = "\n".join(build.splitlines()[:5]) + "\nvit = __vit__"
        ns["__vit__"] = vit
    exec(compile(build + "\n" + use + "\n", "<model card>", "exec"), ns)  # noqa: S102 - our own generated code
    return ns


def meta_facts(bb: Mapping[str, Any], data: Mapping[str, Any], base: BaseModel) -> dict[str, Any]:
    """The JSON's facts about the backbone and the input."""
    import timm

    return {"base_model_kind": base.kind, "pos_embed": bb.get("pos_embed") or "timm",
            "resize": data.get("resize") or "bilinear_antialias", "train_resize": data.get("train_resize"),
            "torch": torch.__version__, "timm": timm.__version__,
            **({"init_seed": base.seed} if base.seed is not None else {})}


def write(out: Path, info: Mapping[str, Any], base: BaseModel) -> None:
    (out / CARD).write_text(card(info, base), encoding="utf-8")
    (out / META_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")


def plain_vit(model: nn.Module) -> nn.Module:
    """The timm ViT a PEFT user has: a copy of our backbone with every adapter layer replaced by
    the frozen layer it wraps, the shared projections removed, and our head as timm's ``head``."""
    vit = copy.deepcopy(model.backbone)
    for name, m in list(vit.named_modules()):
        parent_name, _, child = name.rpartition(".")
        parent = vit.get_submodule(parent_name) if parent_name else vit
        if isinstance(m, AdapterLayer):
            base = getattr(m, "base", None)
            if not isinstance(base, nn.Module):
                raise ExportError(f"{name} ({type(m).__name__}) wraps no frozen layer; no plain ViT to export onto")
            setattr(parent, child, base)
        elif isinstance(m, SharedProjections):
            delattr(parent, child)
    vit.head = copy.deepcopy(model.head)
    vit.num_classes = model.head.out_features
    for p in vit.parameters():
        p.requires_grad_(False)
    return vit


def complete_and_check(model: nn.Module, bb: Mapping, base: BaseModel, info: dict, tmp: Path,
            batch: int, seed: int) -> float:
    """Complete the export in ``tmp`` (the backbone in timm's layout where it needs one) and load it
    with the model card's own code: its logits of random uint8 images must be ours."""
    plain = plain_vit(model)
    if base.kind == "local-dir":
        save_backbone(plain, bb, tmp)
    build, use = loading_code(info, base)
    # hub weights: the card downloads them; here the frozen backbone this run loaded from the hub stands in
    ns = run_code(build, use, tmp, vit=plain if base.kind == "hub" else None)
    size = info["img_size"]
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, size[0], size[1], 3), generator=g, dtype=torch.uint8)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ours = model(images)
        torch.manual_seed(seed)
        theirs = ns["logits"](images)
    diff = float((ours - theirs).abs().max() / max(1.0, float(ours.abs().max())))
    if not diff <= SELF_CHECK_ATOL:
        why = (" (backbone.pos_embed=dinov2_hub: the backbone is saved with its position embeddings resampled "
               "for this input size)" if bb.get("pos_embed") == "dinov2_hub" else "")
        raise ExportError(f"the export, loaded with timm and PEFT as its model card says, does not reproduce this "
                          f"model's logits (max relative difference {diff:.2e} > {SELF_CHECK_ATOL:g}){why}; "
                          f"nothing written")
    return diff
