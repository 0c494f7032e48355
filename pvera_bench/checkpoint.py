"""Training checkpoints for preempted jobs: tensors in safetensors, everything else in JSON.

No pickles: a checkpoint holds the trainable tensors (adapter and head), the optimizer and
scheduler state, the RNG states and the epoch loop's bookkeeping, never code. Files are written
to a temporary name and renamed, so a job killed while saving leaves the previous checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {"param_groups": state["param_groups"], "state": {}}
    for idx, entry in state["state"].items():
        meta["state"][str(idx)] = {}
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                meta["state"][str(idx)][name] = value
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in meta["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _pack(state: dict[str, Any], prefix: str = "") -> tuple[dict[str, torch.Tensor], dict]:
    """One fit's state (``FitLoop.state``) as tensors named under ``prefix`` and JSON metadata."""
    tensors = {f"{prefix}param.{k}": v.detach().cpu().contiguous() for k, v in state["trainable"].items()}
    if state.get("best") is not None:
        tensors.update({f"{prefix}best.{k}": v.detach().cpu().contiguous() for k, v in state["best"].items()})
    opt_tensors, opt_meta = _flatten_optimizer(state["optimizer"])
    tensors.update({prefix + k: v for k, v in opt_tensors.items()})
    tensors[f"{prefix}rng.generator"] = state["generator"].cpu()
    tensors[f"{prefix}rng.torch"] = state["torch_rng"].cpu()
    if state.get("cuda_rng") is not None:
        tensors[f"{prefix}rng.cuda"] = state["cuda_rng"].cpu()
    return tensors, dict(state["info"], optimizer=opt_meta, scheduler={})


def _unpack(tensors: dict[str, torch.Tensor], meta: dict, prefix: str = "") -> dict[str, Any]:
    mine = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    meta = dict(meta)
    optimizer = _unflatten_optimizer(mine, meta.pop("optimizer"))
    return dict(
        meta,
        trainable={k[6:]: v for k, v in mine.items() if k.startswith("param.")},
        best={k[5:]: v for k, v in mine.items() if k.startswith("best.")} or None,
        optimizer=optimizer,
        generator=mine["rng.generator"], torch_rng=mine["rng.torch"], cuda_rng=mine.get("rng.cuda"),
    )


def _write(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"pvera_bench": json.dumps(meta)})
    os.replace(tmp, path)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["pvera_bench"])
        return load_file(str(path)), meta
    except Exception as e:  # a corrupt checkpoint is no checkpoint: train from the start
        log.warning("ignoring unreadable checkpoint %s (%s: %s); training from the start", path, type(e).__name__, e)
        return None


def save(path: Path, state: dict[str, Any]) -> None:
    """Write one fit's state (``FitLoop.state``) to ``path``, atomically."""
    _write(path, *_pack(state))


def load(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path`` as a dict, or None when there is none (or it cannot be read)."""
    read = _read(path)
    if read is None:
        return None
    try:
        return _unpack(*read)
    except KeyError as e:  # e.g. a joint checkpoint where one fit's was expected
        log.warning("ignoring checkpoint %s: it lacks %s; training from the start", path, e)
        return None


def save_joint(path: Path, parts: dict[int, dict[str, Any]], extra: dict[str, torch.Tensor], info: dict) -> None:
    """Several fits stepped in lockstep, in one file written atomically, so that they can never
    be restored at different epochs: ``parts`` maps an index to a ``FitLoop.state``; ``extra``
    holds tensors of the caller's (e.g. the weights a grid keeps); ``info`` is JSON."""
    tensors = {f"extra.{k}": v.detach().cpu().contiguous() for k, v in extra.items()}
    metas = {}
    for i, state in parts.items():
        t, metas[str(i)] = _pack(state, f"part{i}.")
        tensors.update(t)
    _write(path, tensors, dict(info, parts=metas))


def load_joint(path: Path) -> tuple[dict[int, dict[str, Any]], dict[str, torch.Tensor], dict] | None:
    """``save_joint``'s parts, extra tensors and info; None when there is no readable file."""
    read = _read(path)
    if read is None:
        return None
    tensors, meta = read
    try:
        parts = {int(i): _unpack(tensors, m, f"part{i}.") for i, m in meta.pop("parts").items()}
    except KeyError as e:
        log.warning("ignoring checkpoint %s: it lacks %s; training from the start", path, e)
        return None
    extra = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
    return parts, extra, meta
