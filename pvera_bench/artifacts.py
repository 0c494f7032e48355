"""A run's trained weights as a file that can be loaded: ``adapter.safetensors`` in the run directory.

Every ``ok`` run writes it after the test pass and before its record (``runtime.save_weights=false``
skips it). It is written to a temporary name and renamed, so a killed run leaves no half file.

Format (``pvera-bench-adapter/1``), one safetensors file:

- tensors: every trainable tensor of the ``Classifier`` under its ``named_parameters()`` name
  (``backbone.blocks.0.attn.qkv.lambda_d``, ..., ``head.weight``, ``head.bias``), float32, CPU;
- metadata (safetensors' string header, each value JSON):

  ``format``            ``"pvera-bench-adapter/1"``
  ``config``            the resolved config of the trained model, the chosen grid point applied
                        (adapter name and options, backbone, task with ``num_classes``, trainer,
                        protocol, seed, data options): everything rebuilding the model needs
  ``candidate``         the chosen point's index in the grid (``0`` without a grid): with
                        ``config`` (its grid, seed, ``backbone.head_init``/``head_draws``) all that
                        the model builder (``assemble.ModelBuilder``) needs
  ``chosen``            the grid point the protocol chose (``{}`` without a grid)
  ``train_key``         the training key (``identity.split_key``): what changes the trained weights
  ``train_hash``        its digest (the ``train_key`` column of the run's row)
  ``config_hash``       the row key of the training run (``config_hash`` column)
  ``backbone_digest``   a digest of the frozen backbone's tensors (names, shapes, a strided sample
                        of every tensor's values): another backbone or weights file fails to load
  ``frozen_digest``     sha1 of the adapter's frozen buffers (VeRA/PVeRA's shared random
                        projections). They are NOT stored (they are most of the adapter's size):
                        rebuilding regenerates them from the seeds in ``config`` exactly as the
                        run did, and loading fails if the digest differs (another torch build
                        whose RNG draws differently)
  ``versions``          the code identity of the run (package versions, commit)
  ``pvera_bench_digests`` a SHA-256 of every tensor and of the rest of the header (``rundir.seal``),
                        checked before a tensor is used: a changed byte is refused in one line

Rebuilding (:func:`load_run`) is the run's own construction, by the builder training used
(``assemble.ModelBuilder`` with the saved config and candidate: backbone, position embeddings,
per-candidate draws, head init and head draw); then the saved tensors replace the trainable ones
(names and shapes must match exactly).

    from pvera_bench.artifacts import load_run
    model, cfg = load_run("multirun/.../3_demo_pvera_s0")   # eval mode, on the CPU
    probs = model(images_uint8_nhwc).softmax(-1)
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open
from safetensors.torch import load as load_tensors
from safetensors.torch import save as tensors_bytes

from . import adapters, rundir
from .adapters import AdapterLayer
from .assemble import ModelBuilder
from .identity import RESULT_KEYS, digest, key_view, plain_config
from .plan import grid_points

log = logging.getLogger("pvera_bench")

FORMAT = "pvera-bench-adapter/1"
FILENAME = rundir.WEIGHTS  # named by the run directory's owner

class ArtifactError(RuntimeError):
    """Saved weights that cannot be used (missing, corrupt, another model): one line, exit 2."""


# ---------------------------------------------------------------- digests
def _adapter_owned(module: torch.nn.Module) -> set[str]:
    """Names of the tensors adapters own directly (their parameters and frozen buffers)."""
    out = set()
    for name, mod in module.named_modules():
        if isinstance(mod, AdapterLayer) or type(mod).__module__.startswith("pvera_bench.adapters"):
            pre = f"{name}." if name else ""
            out |= {pre + k for k, _ in mod.named_parameters(recurse=False)}
            out |= {pre + k for k, _ in mod.named_buffers(recurse=False)}
    return out


def backbone_digest(backbone: torch.nn.Module, stride: int = 1009) -> str:
    """Names, shapes and every ``stride``-th value of each frozen backbone tensor (the adapter's own
    tensors excluded): fast on ViT-B, and any other weights file differs in it. Save and load
    compute it on the same adapted structure."""
    owned = _adapter_owned(backbone)
    h = hashlib.sha1()
    for name, t in sorted(backbone.state_dict(keep_vars=True).items()):
        if name in owned or t.requires_grad:
            continue
        h.update(f"{name}:{tuple(t.shape)}:".encode())
        h.update(t.detach().reshape(-1)[::stride].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def frozen_digest(model: torch.nn.Module) -> str:
    """sha1 of the buffers adapters added (VeRA/PVeRA projections), in module order."""
    h = hashlib.sha1()
    seen: set[int] = set()
    for name, mod in model.named_modules():
        if isinstance(mod, AdapterLayer) or type(mod).__module__.startswith("pvera_bench.adapters"):
            for bname, b in mod.named_buffers(recurse=False):
                if id(b) in seen:
                    continue
                seen.add(id(b))
                h.update(f"{name}.{bname}:{tuple(b.shape)}:".encode())
                h.update(b.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- save
def trainable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save(run_dir: str | os.PathLike, model: torch.nn.Module, config: Mapping[str, Any], *, candidate: int,
         chosen: Mapping[str, Any], train_key: Mapping[str, Any], config_hash: str, versions: str) -> Path:
    """Write ``run_dir/adapter.safetensors`` atomically; returns its path. ``config``: the resolved
    config of the trained model (the chosen point applied); ``candidate``: the chosen point's index
    in the grid (what the model builder needs besides the config)."""
    path = Path(run_dir) / FILENAME
    meta = dict(format=FORMAT, config=json.dumps(plain_config(config), sort_keys=True, default=str),
                candidate=str(int(candidate)), chosen=json.dumps(dict(chosen), sort_keys=True, default=str),
                train_key=json.dumps(train_key, sort_keys=True, default=str), train_hash=digest(train_key),
                config_hash=config_hash, backbone_digest=backbone_digest(model.backbone),
                frozen_digest=frozen_digest(model), versions=versions)
    rundir.atomic_write(path, rundir.seal(tensors_bytes(trainable_tensors(model), metadata=meta)))
    return path


# ---------------------------------------------------------------- load
def read_metadata(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The decoded metadata of a run's weight file, without reading its tensors; ArtifactError when
    it is missing, unreadable or not this format."""
    path = Path(run_dir) / FILENAME
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist: this run saved no weights (it failed, predates saved weights, "
                            f"or ran with runtime.save_weights=false); train it again to evaluate it")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types on a bad file
        raise ArtifactError(f"{path} is corrupt ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                            f"train the run again") from None
    if raw.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a pvera-bench weight file of format {FORMAT} "
                            f"(format {raw.get('format')!r}); train the run again")
    meta: dict[str, Any] = dict(raw)
    try:
        for k in ("config", "chosen", "train_key"):
            meta[k] = json.loads(raw[k])
    except (KeyError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path} has a damaged header ({e}); train the run again") from None
    meta["shapes"] = shapes
    return meta


def candidate_index(meta: Mapping[str, Any]) -> int:
    """The grid index of the saved model's candidate: the header's ``candidate``; for a file
    written before it was recorded, the first grid point equal to ``chosen``."""
    if "candidate" in meta:
        return int(meta["candidate"])
    points = grid_points((meta["config"].get("protocol") or {}).get("grid")) or [{}]
    wanted = json.loads(json.dumps(meta["chosen"]))
    return next((i for i, q in enumerate(points) if json.loads(json.dumps(q)) == wanted), 0)


def load_run(run_dir: str | os.PathLike, overrides: Mapping[str, Any] | None = None,
             device: str | torch.device = "cpu") -> tuple[torch.nn.Module, DictConfig]:
    """``(model, config)`` of a saved run: the ``Classifier`` with its trained adapter and head, in
    eval mode, and the resolved config it was trained with (the chosen point applied), with
    ``overrides`` (``{"adapter.inference": "mc", ...}``, evaluation options only) applied to it and
    to the model. Raises :class:`ArtifactError` on a missing, corrupt or mismatched file."""
    run_dir = Path(run_dir)
    meta = read_metadata(run_dir)
    trained = OmegaConf.create(meta["config"])
    check_run_config(run_dir, trained)
    path = run_dir / FILENAME
    builder = ModelBuilder(trained)
    index = candidate_index(meta)
    if index >= len(builder.points) or json.loads(json.dumps(builder.points[index])) != meta["chosen"]:
        raise ArtifactError(f"{path}: its candidate {index} is not the grid point it says was chosen "
                            f"({meta['chosen']}); the header is damaged, train the run again")
    model = builder(index)
    cfg = copy.deepcopy(trained)  # the overrides apply to the returned config, not to the trained one
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, key, value, force_add=True)
    if backbone_digest(model.backbone) != meta.get("backbone_digest"):
        raise ArtifactError(f"{path} was trained on other backbone weights than backbone {cfg.backbone.name!r} "
                            f"loads now (its checkpoint file or hub weights changed); evaluate it with the weights "
                            f"it was trained on, or train it again")
    own = {n: p for n, p in model.named_parameters() if p.requires_grad}
    shapes = meta["shapes"]
    if set(own) != set(shapes) or any(tuple(p.shape) != shapes[n] for n, p in own.items()):
        diff = sorted(set(own) ^ set(shapes)) or [n for n, p in own.items() if tuple(p.shape) != shapes[n]]
        raise ArtifactError(f"{path} does not fit the model its config builds (adapter {cfg.adapter.name!r} on "
                            f"{cfg.backbone.name!r}): tensors differ, e.g. {diff[0]}; train the run again")
    if frozen_digest(model) != meta.get("frozen_digest"):
        raise ArtifactError(f"{path}: the frozen random projections regenerated from the run's seeds differ from "
                            f"those it was trained with (another torch version draws differently); train it again")
    tensors = _read_tensors(path)
    with torch.no_grad():
        for n, p in own.items():
            t = tensors[n]
            if not torch.isfinite(t).all():
                raise ArtifactError(f"{path} is corrupt: tensor {n} holds non-finite values; train the run again")
            p.copy_(t)
    if "inference" in cfg.adapter:  # the adapter's inference options (identity.EVALUATION_OPTIONS), as overridden
        adapters.set_inference(model, str(cfg.adapter.inference), int(cfg.adapter.get("mc_samples", 1)))
    model.eval()
    return model.to(device), cfg


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of weight file ``path`` once the digest of every tensor in its header is checked
    (``rundir.seal``); a file written before weight files were sealed is read with a warning."""
    try:
        blob, meta = rundir.read_sealed(path)
    except rundir.CorruptFileError as e:
        if "carries no digests" not in str(e):
            raise ArtifactError(f"{' '.join(str(e).split())[:300]}; train the run again") from None
        log.warning("%s carries no digests (written before weight files were sealed): its bytes are not checked", path)
        blob = path.read_bytes()
    try:
        return load_tensors(blob)
    except Exception as e:  # noqa: BLE001 - safetensors raises several types on a bad file
        raise ArtifactError(f"{path} is corrupt ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                            f"train the run again") from None


def check_run_config(run_dir: Path, cfg: DictConfig) -> None:
    """The run directory's ``config.yaml`` (when present) must describe the model the weights are
    of: the same backbone (every option), adapter, task and seed, and the same training setting
    (every option of the groups in the run's key, as ``identity.key_view`` reads them: a foreign
    weight file of the same adapter with other targets or rank is refused)."""
    p = run_dir / "config.yaml"
    if not p.is_file():
        return
    try:
        own = OmegaConf.to_container(OmegaConf.load(p), resolve=True)
        if not isinstance(own, dict):
            raise ValueError("not a mapping")
    except Exception as e:  # noqa: BLE001 - YAML and OmegaConf raise several types on a damaged file
        raise ArtifactError(f"{p} is damaged ({type(e).__name__}: {' '.join(str(e).split())[:120]}); restore it "
                            f"or delete it (the weight file holds the config)") from None
    saved = OmegaConf.to_container(cfg, resolve=True)
    checks = (("backbone", own.get("backbone"), saved.get("backbone")),
              ("adapter", (own.get("adapter") or {}).get("name"), saved["adapter"].get("name")),
              ("task", (own.get("task") or {}).get("name"), saved["task"].get("name")),
              ("seed", own.get("seed"), saved.get("seed")))
    for what, a, b in checks:
        if a != b:
            name = (lambda v: v.get("name") if isinstance(v, dict) else v)
            detail = "" if name(a) != name(b) else " (same name, other options)"
            raise ArtifactError(f"{run_dir / FILENAME} holds a model of {what} {name(b)!r} but the run's config.yaml "
                                f"says {what} {name(a)!r}{detail}: the weight file belongs to another run; train "
                                f"this run again")
    mine, theirs = key_view(own), key_view(saved)
    for group in RESULT_KEYS:
        a, b = mine.get(group), theirs.get(group)
        if a != b:
            both = isinstance(a, dict) and isinstance(b, dict)
            k = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))[0] if both else None
            what = f"{group}.{k}: {b.get(k)!r} vs {a.get(k)!r}" if both else f"{group}: {b!r} vs {a!r}"
            raise ArtifactError(f"{run_dir / FILENAME} was trained with other {group} options than the run's "
                                f"config.yaml says (e.g. {what}): the weight file belongs to another run; train "
                                f"this run again")
