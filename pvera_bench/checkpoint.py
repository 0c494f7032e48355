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


def save(path: Path, *, trainable: dict[str, torch.Tensor], best: dict[str, torch.Tensor] | None,
         optimizer: dict, scheduler: dict, generator: torch.Tensor, info: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"param.{k}": v.detach().cpu().contiguous() for k, v in trainable.items()}
    if best is not None:
        tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in best.items()})
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    tensors.update(opt_tensors)
    tensors["rng.generator"] = generator.cpu()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = dict(info, optimizer=opt_meta, scheduler=scheduler)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"pvera_bench": json.dumps(meta)})
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path`` as a dict, or None when there is none (or it cannot be read)."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["pvera_bench"])
        tensors = load_file(str(path))
    except Exception as e:  # a corrupt checkpoint is no checkpoint: train from the start
        log.warning("ignoring unreadable checkpoint %s (%s: %s); training from the start", path, type(e).__name__, e)
        return None
    optimizer = _unflatten_optimizer(tensors, meta.pop("optimizer"))
    return dict(
        meta,
        trainable={k[6:]: v for k, v in tensors.items() if k.startswith("param.")},
        best={k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None,
        optimizer=optimizer,
        generator=tensors["rng.generator"], torch_rng=tensors["rng.torch"], cuda_rng=tensors.get("rng.cuda"),
    )
