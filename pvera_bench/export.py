"""Export a trained adapter as a PEFT checkpoint that PEFT loads onto the plain timm ViT.

    from pvera_bench.export import export_peft
    export_peft(classifier, "vera", "out/")     # adapter_config.json, adapter_model.safetensors
    # elsewhere, with PEFT only:
    vit = timm.create_model(<the timm model>, pretrained=True, num_classes=K)
    model = peft.PeftModel.from_pretrained(vit, "out/")    # the same logits as ours

    pvera-bench export RUN_DIR --format peft --out DIR    # the same from a saved run (:func:`main`)
    clf = load_peft("DIR", backbone)   # the reverse: any PEFT checkpoint on timm's ViT as our Classifier

PEFT adapts timm's *fused* ``attn.qkv`` layer (``Linear(d, 3d)``, output ``[q | k | v]``) as one
layer (``target_modules=["qkv"]``), where our q/v adapters keep separate q and v factors and
leave k alone. Each adapter below is written as the PEFT form that computes the same function,
with zero blocks where ours has nothing:

- ``lora`` (q/v or q/k/v, per-projection factors): a rank ``n r`` PEFT LoRA on qkv, ``lora_A`` =
  the ``A_k`` stacked, ``lora_B`` block-diagonal (third k of the output reads only the codes of
  ``A_k``), ``lora_alpha = n alpha`` so that ``lora_alpha / rank`` is our ``alpha / r``; the fused
  form (one ``A`` shared) is a rank-r LoRA as it is, zero rows for an unadapted third;
- ``dora``: the same LoRA with ``use_dora``; the magnitude of the k rows is ``||W_k||`` per row,
  so that PEFT's ``magnitude / ||W + dW||`` is 1 there;
- ``vera``: a rank-2r PEFT VeRA, ``vera_A = [A_q | A_v]^T`` (2r x d), ``vera_B`` (3d x 2r)
  block-structured (q rows read the first r codes, v rows the last r, k rows nothing),
  ``lambda_d`` as ours and ``lambda_b = alpha [lambda_b_q | 0 | lambda_b_v]`` (PEFT's VeRA has no
  alpha); the projections are saved in the checkpoint (``save_projection``), since PEFT's PRNG
  would not regenerate ours;
- ``pvera``: as VeRA at rank 2r, with PEFT's ``[mu | logvar]`` halves (``chunk(2)``) each holding
  the q codes then the v codes. PEFT's PVeRA differs from ours in three ways, checked in
  peft/tuners/pvera/layer.py (PEFT 0.21): (1) it has no ``fixed`` mode (``z = mu + std``): an
  export of a run evaluated that way is refused; ``mean`` is ``sample_at_inference=False``,
  ``mc`` is ``sample_at_inference=True``, which draws ``z = mu + eps std`` with one ``eps`` per
  element exactly as ours does (the same draws, in the same order, from the same global RNG: the
  test checks bit-level agreement under one seed); averaging several passes stays the user's
  job, as in our evaluator; (2) PEFT's training loss has no KL term (``KL / beta``), which only
  matters to someone who trains the export further; (3) no alpha, folded into ``lambda_b`` as
  for VeRA;
- ``ia3``: PEFT's IA3 on ``qkv`` (output scaled after the bias, ``[1 | l_k | l_v]``) and ``fc2``
  as a feed-forward module (input scaled), exactly ours.

The classifier head is ``modules_to_save=["head"]``: timm's ViT with ``num_classes=K`` puts
``head`` right where our :class:`~pvera_bench.backbones.Classifier` puts its own. Inputs are
the normalised float images (our Classifier normalises uint8 itself; the export's
``pvera_bench_export.json`` records the mean and std).

Adapters with no exact PEFT form say so (:func:`no_peft_form`). Each export checks itself
before anything is written: PEFT's model, built in memory from the exported tensors, must give
our logits on a fixed random batch (float32), or nothing is written.

Exporters are registered per adapter name (:func:`peft_exporter`); every name in the adapter
registry has either an exporter or a reason (a test checks it).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import adapters
from .adapters.base import AdapterLayer
from .adapters.dora import DoraQV
from .adapters.ia3 import IA3FF, IA3KV
from .adapters.lora import LoraQV
from .adapters.pvera import PveraQV
from .adapters.qkv import SharedProjections
from .adapters.vera import VeraQV

TUNER = "base_model."  # PEFT's key prefix for the tuner's own tensors (VeRA/PVeRA's shared projections)
PREFIX = TUNER + "model."  # ... and for the wrapped model's modules (save_pretrained)
META_FILE = "pvera_bench_export.json"
SELF_CHECK_ATOL = 1e-5  # float32, relative to max(1, |logits|)


class ExportError(ValueError):
    """An export that cannot be written (no exact PEFT form, a merged model, ...): one line."""


@dataclass
class PeftExport:
    """What an exporter returns: PEFT's config and the adapter tensors under PEFT's saved keys
    (``base_model.model.blocks.0.attn.qkv.lora_A.weight``, ``base_model.vera_A`` ...), head excluded."""

    config: Any
    tensors: dict[str, torch.Tensor]
    notes: dict[str, Any] = field(default_factory=dict)


_EXPORTERS: dict[str, Callable[[nn.Module], PeftExport]] = {}
_NO_FORM: dict[str, str] = {}


def peft_exporter(name: str):
    """Decorator: ``@peft_exporter("lora") def f(classifier) -> PeftExport``."""

    def deco(fn):
        adapters.get(name)  # an unknown adapter name is a programming error here
        _EXPORTERS[name] = fn
        return fn

    return deco


def no_peft_form(name: str, reason: str) -> None:
    """Declare that adapter ``name`` has no exact PEFT form, and why (the user's error line)."""
    adapters.get(name)
    _NO_FORM[name] = reason


def exportable() -> list[str]:
    return sorted(_EXPORTERS)


def not_exportable() -> dict[str, str]:
    return dict(_NO_FORM)


# ------------------------------------------------------------------------------------------------
# per-adapter forms
# ------------------------------------------------------------------------------------------------
def _layers(model: nn.Module, path: str, cls: type) -> list[nn.Module]:
    """``blk.<path>`` of every block, each required to be exactly ``cls`` (not a subclass)."""
    out = [blk.get_submodule(path) for blk in model.backbone.blocks]
    for i, m in enumerate(out):
        if type(m) is not cls:
            raise ExportError(f"blocks.{i}.{path} is {type(m).__name__}, expected {cls.__name__}; "
                              f"the model does not carry the adapter it was exported as")
    return out


def _qkv_key(i: int, name: str) -> str:
    return f"{PREFIX}blocks.{i}.attn.qkv.{name}"


def _block_rows(parts: dict[int, torch.Tensor], d: int, cols: int) -> torch.Tensor:
    """A (3d, cols) matrix: third k's rows are ``parts[k]`` (d x cols), zero where absent."""
    out = torch.zeros(3 * d, cols, dtype=next(iter(parts.values())).dtype)
    for k, t in parts.items():
        out[k * d:(k + 1) * d] = t
    return out


def _lora_factors(layer: LoraQV) -> tuple[torch.Tensor, torch.Tensor, int]:
    """PEFT's ``lora_A`` (rank x d), ``lora_B`` (3d x rank) and the rank, for one of our layers."""
    d, r = layer.dim, layer.r
    a = layer.lora_A.detach()  # (d, r) fused, (d, n r) per projection
    rank = a.shape[1]
    parts = {}
    for i, k in enumerate(layer.ks):
        b_k = layer.lora_B[i].detach().t()  # (d_out, r)
        if layer.fused:
            parts[k] = b_k
        else:  # third k reads only its own r codes
            parts[k] = torch.zeros(d, rank, dtype=b_k.dtype)
            parts[k][:, i * r:(i + 1) * r] = b_k
    return a.t().contiguous(), _block_rows(parts, d, rank), rank


def _lora_export(model: nn.Module, cls: type, dora: bool) -> PeftExport:
    import peft

    layers = _layers(model, "attn.qkv", cls)
    first = layers[0]
    tensors: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(layers):
        a, b, rank = _lora_factors(layer)
        tensors[_qkv_key(i, "lora_A.weight")] = a
        tensors[_qkv_key(i, "lora_B.weight")] = b
        if dora:
            d = layer.dim
            w = layer.base.weight.detach().view(3, d, d)
            # k rows: ||W_k|| as PEFT computes it (torch.linalg.norm per row), so its scale is 1 there
            parts = {k: torch.linalg.norm(w[k], dim=1)[:, None] for k in range(3)}
            for i_qv, k in enumerate((0, 2)):
                parts[k] = layer.magnitude.detach()[i_qv][:, None]
            tensors[_qkv_key(i, "lora_magnitude_vector")] = _block_rows(parts, d, 1)[:, 0]
    rank = tensors[_qkv_key(0, "lora_A.weight")].shape[0]
    p = first.dropout.p if isinstance(first.dropout, nn.Dropout) else 0.0
    config = peft.LoraConfig(r=rank, lora_alpha=first.scale * rank, target_modules=["qkv"], lora_dropout=p,
                             use_dora=dora, bias="none", modules_to_save=["head"])
    return PeftExport(config, tensors, {"peft_rank": rank})


@peft_exporter("lora")
def _lora(model: nn.Module) -> PeftExport:
    return _lora_export(model, LoraQV, dora=False)


@peft_exporter("dora")
def _dora(model: nn.Module) -> PeftExport:
    return _lora_export(model, DoraQV, dora=True)


def _shared(layers: list[VeraQV]) -> SharedProjections:
    shared = layers[0].shared
    if any(layer.shared is not shared for layer in layers):
        raise ExportError("the blocks do not share one pair of projections; PEFT's VeRA/PVeRA needs one")
    return shared


def _vera_b(shared: SharedProjections, d: int, r: int) -> torch.Tensor:
    """PEFT's B (3d x 2r): q rows read codes [0, r), v rows [r, 2r), k rows nothing."""
    b = shared.B.detach()  # (2, r, d)
    q = torch.cat((b[0].t(), torch.zeros(d, r, dtype=b.dtype)), dim=1)
    v = torch.cat((torch.zeros(d, r, dtype=b.dtype), b[1].t()), dim=1)
    return _block_rows({0: q, 2: v}, d, 2 * r)


def _lambda_b(layer: VeraQV) -> torch.Tensor:
    """``alpha * [lambda_b_q | 0 | lambda_b_v]`` (3d): our alpha folded in, as our forward computes it."""
    lb = (layer.lambda_b * layer.alpha).detach()
    return _block_rows({0: lb[0][:, None], 2: lb[1][:, None]}, layer.dim, 1)[:, 0]


@peft_exporter("vera")
def _vera(model: nn.Module) -> PeftExport:
    import peft

    layers = _layers(model, "attn.qkv", VeraQV)
    shared, d, r = _shared(layers), layers[0].dim, layers[0].r
    tensors = {f"{TUNER}vera_A": shared.A.detach().t().contiguous(),  # (2r, d)
               f"{TUNER}vera_B": _vera_b(shared, d, r)}
    for i, layer in enumerate(layers):
        tensors[_qkv_key(i, "vera_lambda_d")] = layer.lambda_d.detach().clone()  # [q | v], r each
        tensors[_qkv_key(i, "vera_lambda_b")] = _lambda_b(layer)
    config = peft.VeraConfig(r=2 * r, target_modules=["qkv"], save_projection=True, vera_dropout=0.0,
                             modules_to_save=["head"])
    return PeftExport(config, tensors, {"peft_rank": 2 * r})


@peft_exporter("pvera")
def _pvera(model: nn.Module) -> PeftExport:
    import peft

    layers = _layers(model, "attn.qkv", PveraQV)
    shared, d, r = _shared(layers), layers[0].dim, layers[0].r
    modes = {layer.inference for layer in layers}
    if modes - {"mean", "mc"}:
        raise ExportError(f"pvera with inference={'/'.join(sorted(modes))} has no PEFT form: PEFT's PVeRA "
                          f"uses z = mu (sample_at_inference=False) or a sample (True), never mu + std; "
                          f"export with inference mean or mc (--inference mean|mc)")
    # ours: A (d, 2 projections x [mu r | logvar r]); PEFT: rows [mu_q, mu_v, logvar_q, logvar_v] (r each)
    a = shared.A.detach().view(d, 2, 2, r).permute(2, 1, 3, 0).reshape(4 * r, d).contiguous()
    tensors = {f"{TUNER}pvera_A": a, f"{TUNER}pvera_B": _vera_b(shared, d, r)}
    for i, layer in enumerate(layers):
        ld = layer.lambda_d.detach().view(2, 2, r).permute(1, 0, 2).reshape(-1).contiguous()
        tensors[_qkv_key(i, "pvera_lambda_d")] = ld
        tensors[_qkv_key(i, "pvera_lambda_b")] = _lambda_b(layer)
    mode = modes.pop()
    config = peft.PveraConfig(r=2 * r, target_modules=["qkv"], save_projection=True, pvera_dropout=0.0,
                              sample_at_inference=mode == "mc", modules_to_save=["head"])
    return PeftExport(config, tensors, {"peft_rank": 2 * r, "pvera_inference": mode})


@peft_exporter("ia3")
def _ia3(model: nn.Module) -> PeftExport:
    import peft

    qkv = _layers(model, "attn.qkv", IA3KV)
    fc2 = _layers(model, "mlp.fc2", IA3FF)
    tensors = {}
    for i, (a, f) in enumerate(zip(qkv, fc2)):
        tensors[_qkv_key(i, "ia3_l")] = a._scale().detach()[:, None].clone()  # (3d, 1): [1 | l_k | l_v]
        tensors[f"{PREFIX}blocks.{i}.mlp.fc2.ia3_l"] = f.scale_ff.detach()[None, :].clone()  # (1, hidden)
    config = peft.IA3Config(target_modules=["qkv", "fc2"], feedforward_modules=["fc2"], modules_to_save=["head"])
    return PeftExport(config, tensors)


no_peft_form("adaptformer", "adaptformer has no PEFT form: PEFT has no tuner for a bottleneck MLP parallel to "
                            "the block's MLP (AdaptFormer); its trained weights stay in the run directory")
no_peft_form("bottleneck", "bottleneck has no PEFT form: PEFT has no serial bottleneck (Houlsby) adapter; its "
                           "trained weights stay in the run directory")
no_peft_form("linear_probe", "linear_probe has no PEFT form: it trains only the head, and PEFT builds no "
                             "checkpoint without an adapter (an empty target_modules is refused); load the "
                             "head straight into timm's ViT (num_classes=K) from the run's weights instead")


# ------------------------------------------------------------------------------------------------
# the common part
# ------------------------------------------------------------------------------------------------
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


def base_model_id(backbone: nn.Module) -> str:
    """The Hugging Face Hub id of the backbone's weights (``timm/...``), else its timm name."""
    pcfg = getattr(backbone, "pretrained_cfg", None) or {}
    hub = pcfg.get("hf_hub_id")
    if hub:
        return f"hf-hub:{hub}" if not str(hub).startswith("hf-hub:") else str(hub)
    arch, tag = pcfg.get("architecture"), pcfg.get("tag")
    return f"{arch}.{tag}" if arch and tag else str(arch or type(backbone).__name__)


def _our_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.head(model.backbone(x))


def _compare(model: nn.Module, peft_model: nn.Module, x: torch.Tensor, seed: int) -> float:
    """Max |ours - PEFT's| on ``x``, each forward run from the same global RNG state (PVeRA mc)."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ours = _our_logits(model, x)
        torch.manual_seed(seed)
        theirs = peft_model(x)
    return float((ours - theirs).abs().max() / max(1.0, float(ours.abs().max())))


def build_peft(model: nn.Module, adapter: str):
    """``(peft_model, export)``: PEFT's model on :func:`plain_vit`, holding our tensors (in memory)."""
    if adapter in _NO_FORM:
        raise ExportError(_NO_FORM[adapter])
    if adapter not in _EXPORTERS:
        adapters.get(adapter)  # unknown name: its own error, with the valid names
        raise ExportError(f"{adapter} has no PEFT exporter yet; exportable: {', '.join(exportable())}")
    if any(m.merged for m in adapters.adapter_layers(model) if hasattr(m, "merged")):
        raise ExportError("the model's adapter is merged into its frozen weights; unmerge it before exporting")
    import peft

    try:
        exp = _EXPORTERS[adapter](model)
        peft_model = peft.get_peft_model(plain_vit(model), exp.config)
    except (AttributeError, TypeError) as e:  # an older PEFT without this tuner or option
        raise ExportError(f"PEFT {peft.__version__} cannot build {adapter}'s form ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}); upgrade PEFT (pip install -U peft)") from e
    head = {f"{PREFIX}head.{k}": v.detach() for k, v in model.head.state_dict().items()}
    state = {**exp.tensors, **head}
    result = peft.set_peft_model_state_dict(peft_model, state)
    saved = peft.get_peft_model_state_dict(peft_model)
    if result.unexpected_keys or set(saved) != set(state):
        missing = sorted(set(saved) - set(state))[:3]
        raise ExportError(f"PEFT {peft.__version__} lays out {adapter} differently than this exporter "
                          f"(unexpected {sorted(result.unexpected_keys)[:3]}, not set {missing})")
    for k, v in saved.items():
        if not torch.equal(v, state[k].to(v.dtype)):
            raise ExportError(f"PEFT did not take the exported tensor {k}")
    peft_model.eval()
    return peft_model, exp


def export_peft(model: nn.Module, adapter: str, out_dir: str | os.PathLike, *, base_model: str | None = None,
                meta: dict | None = None, check_batch: int = 2, seed: int = 0) -> dict:
    """Write ``model`` (our :class:`~pvera_bench.backbones.Classifier` with adapter ``adapter``) as
    a PEFT checkpoint in ``out_dir`` (which must not exist or be empty); returns the metadata written
    to ``pvera_bench_export.json`` (``meta`` added to it). ``base_model``: PEFT's
    ``base_model_name_or_path`` (default: the backbone's hub id, see :func:`base_model_id`).
    Raises :class:`ExportError` (nothing written) when there is no exact PEFT form or PEFT's model
    does not reproduce our logits on a random batch."""
    import peft

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not empty; pass a new directory with --out")
    was_training = model.training
    model.eval()
    try:
        peft_model, exp = build_peft(model, adapter)
        g = torch.Generator().manual_seed(seed)
        size = model.backbone.patch_embed.img_size
        x = torch.randn(check_batch, 3, size[0], size[1], generator=g)
        diff = _compare(model, peft_model, x, seed)
        if not diff <= SELF_CHECK_ATOL:
            raise ExportError(f"PEFT's {adapter} does not reproduce this model's logits (max relative "
                              f"difference {diff:.2e} > {SELF_CHECK_ATOL:g}); nothing written")
        pcfg = getattr(model.backbone, "pretrained_cfg", None) or {}
        info = {
            "format": "peft", "peft_version": peft.__version__, "adapter": adapter,
            "peft_type": str(exp.config.peft_type.value), **exp.notes,
            "base_model": base_model or base_model_id(model.backbone), "timm_architecture": pcfg.get("architecture"),
            "num_classes": model.head.out_features, "img_size": list(model.backbone.patch_embed.img_size),
            "input": "float NCHW images normalised with mean/std (0-1 scale): timm's ViT with "
                     "num_classes=num_classes, then peft.PeftModel.from_pretrained(vit, this directory)",
            "mean": list(pcfg.get("mean", (0.5, 0.5, 0.5))), "std": list(pcfg.get("std", (0.5, 0.5, 0.5))),
            "self_check_max_rel_diff": diff, **(meta or {}),
        }
        exp.config.base_model_name_or_path = info["base_model"]
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            with warnings.catch_warnings():  # PEFT looks for a transformers config.json at the hub id
                warnings.filterwarnings("ignore", message="Could not find a config file")
                peft_model.save_pretrained(str(tmp))
            (tmp / META_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
            if out.exists():
                out.rmdir()  # empty, checked above
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return info
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------------------------------
# the reverse: a PEFT checkpoint trained elsewhere, as our Classifier
# ------------------------------------------------------------------------------------------------
def load_peft(peft_dir: str | os.PathLike, backbone: nn.Module) -> nn.Module:
    """A PEFT checkpoint trained elsewhere on this timm ViT, as our
    :class:`~pvera_bench.backbones.Classifier` (uint8 NHWC images in, logits out, eval mode), so
    that the evaluator scores it as it scores our runs.

    ``backbone``: the frozen timm ViT without its classifier (``create_backbone``, ``num_classes=0``),
    the one the checkpoint was trained on. The checkpoint must hold its classifier as
    ``modules_to_save=["head"]`` (any PEFT tuner that applies to timm's layers works: PEFT's own
    model runs inside, nothing is converted). Raises :class:`ExportError` otherwise."""
    import peft

    from .backbones import Classifier

    path = Path(peft_dir)
    if not (path / "adapter_config.json").is_file():
        raise ExportError(f"{path} holds no adapter_config.json; pass a directory written by PEFT's save_pretrained")
    config = peft.PeftConfig.from_pretrained(str(path))
    state = peft.load_peft_weights(str(path), device="cpu")
    head = {k[len(f"{PREFIX}head."):]: v for k, v in state.items() if k.startswith(f"{PREFIX}head.")}
    if set(head) != {"weight", "bias"}:
        raise ExportError(f"{path} holds no classifier head (head.weight, head.bias); train it with "
                          f"modules_to_save=['head'] on timm's ViT")
    config.modules_to_save = None  # the head is our Classifier's own
    config.inference_mode = True
    model = peft.get_peft_model(backbone, config)
    adapter_state = {k: v for k, v in state.items() if not k.startswith(f"{PREFIX}head.")}
    result = peft.set_peft_model_state_dict(model, adapter_state)
    if result.unexpected_keys:
        raise ExportError(f"{path} does not fit this backbone: unexpected tensors, e.g. {result.unexpected_keys[0]}")
    clf = Classifier(model, head["weight"].shape[0])
    clf.head.load_state_dict(head)
    for p in clf.parameters():
        p.requires_grad_(False)
    return clf.eval()


# ------------------------------------------------------------------------------------------------
# pvera-bench export RUN_DIR --format peft --out DIR
# ------------------------------------------------------------------------------------------------
FORMATS = ("peft",)


def build_parser():
    import argparse

    ap = argparse.ArgumentParser(
        prog="pvera-bench export",
        description="Write a saved run's trained adapter and head in another library's format. "
                    "peft: adapter_config.json + adapter_model.safetensors (the head as modules_to_save), "
                    "loaded with peft.PeftModel.from_pretrained(timm ViT with num_classes=K, DIR); "
                    f"exportable adapters: {', '.join(exportable())}.")
    ap.add_argument("run_dir", metavar="RUN_DIR", help="a run directory holding adapter.safetensors")
    ap.add_argument("--format", choices=FORMATS, default="peft", help="the library whose format to write")
    ap.add_argument("--out", required=True, metavar="DIR", help="a new (or empty) directory to write")
    ap.add_argument("--inference", choices=("mean", "mc"),
                    help="pvera only: the inference the export computes (default: the run's); mean is "
                         "deterministic, mc samples z at every forward as PEFT's sample_at_inference")
    return ap


def main(argv: list[str] | None = None) -> int:
    import sys

    args = build_parser().parse_args(argv)

    def fail(msg: str) -> int:
        print(f"pvera-bench export: error: {msg}", file=sys.stderr)
        return 2

    from omegaconf import OmegaConf

    from .artifacts import ArtifactError, load_run, read_metadata

    try:
        meta = read_metadata(args.run_dir)
    except ArtifactError as e:
        return fail(str(e))
    cfg = meta["config"]
    adapter = cfg["adapter"]["name"]
    if adapter in _NO_FORM:  # before building anything
        return fail(_NO_FORM[adapter])
    if args.inference and adapter != "pvera":
        return fail(f"--inference is for pvera runs; this run's adapter is {adapter}")
    try:
        import peft  # noqa: F401
    except ImportError:
        return fail("exporting to PEFT needs the peft package (pip install 'pvera-bench[peft]')")
    overrides = {"adapter.inference": args.inference} if args.inference else None
    try:
        model, run_cfg = load_run(args.run_dir, overrides)
        bb = run_cfg.backbone
        if bb.get("checkpoint"):
            weights, base = f"file {bb.checkpoint}", str(bb.model)
        elif bb.get("pretrained"):
            weights, base = "hub", None  # the hub id of the weights (base_model_id)
        else:
            seed = bb.get("init_seed", run_cfg.seed)  # run.py seeds this before creating the backbone
            weights, base = f"random (torch.manual_seed({seed}) before timm.create_model)", str(bb.model)
        info = export_peft(model, adapter, args.out, base_model=base, meta={
            "backbone": bb.get("name"), "backbone_weights": weights, "timm_model": str(bb.model),
            "timm_kwargs": OmegaConf.to_container(bb.kwargs) if bb.get("kwargs") else {},
            "run_dir": str(Path(args.run_dir).resolve()),
            "task": run_cfg.task.get("name"), "seed": run_cfg.get("seed"),
            "train_hash": meta.get("train_hash"), "config_hash": meta.get("config_hash"),
        })
    except (ArtifactError, ExportError) as e:
        return fail(str(e))
    extra = f", rank {info['peft_rank']}" if "peft_rank" in info else ""
    mode = f", pvera inference {info['pvera_inference']}" if "pvera_inference" in info else ""
    print(f"wrote {args.out}: PEFT {info['peft_type']} ({adapter}{extra}{mode}) on {info['base_model']}, "
          f"head of {info['num_classes']} classes as modules_to_save; PEFT's logits vs this tool's: "
          f"max relative difference {info['self_check_max_rel_diff']:.1e} (float32)")
    return 0
no_peft_form("full", "full has no PEFT form: every backbone weight trains, so there is no adapter to write; save the "
                     "whole model's state_dict instead (the run's weights hold every trained tensor)")
no_peft_form("bitfit", "bitfit has no PEFT form (none exact): PEFT's bias tuner (BEFT, peft/tuners/beft) adds a bias to "
                       "nn.Linear layers only, and BitFit also trains the LayerNorm and patch-embedding biases")
no_peft_form("vpt", "vpt has no PEFT form: PEFT's prompt tuning prepends virtual tokens to a transformers model's "
                    "word embeddings, not to a timm ViT's token sequence block by block")
no_peft_form("ssf", "ssf has no PEFT form: PEFT has no scale-and-shift tuner; SSF merges into the frozen weights "
                    "(the run's weights, merged, are a plain timm ViT)")
