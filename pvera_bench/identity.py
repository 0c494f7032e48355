"""A run's identity: what makes its numbers, in one place.

- :func:`key_view`: the resolved config without what changes no number (labels, options no grid
  point reads, the base value of a key the grid sets), its grid spelt one way (dotted keys, a
  one-value key folded into the config): the same trained model has the same key however the
  config spells it;
- :func:`resume_key`: that view plus what the config names but does not say (the resolved
  precision, the backbone's weights by content, the device's type, the data's fingerprints);
- :func:`split_key`: the resume key split into the **training key** (what changes the trained
  weights; runs with equal training keys share them) and the **evaluation options** (what only
  the test pass, OOD and calibration read); :func:`key_hash` of both is a row's ``config_hash``;
- :data:`EVALUATION_OPTIONS`: the options a trained model's evaluation may change, declared once:
  ``pvera-bench evaluate`` accepts exactly these as overrides (:func:`accepts_override`) and a
  sweep hands them to saved weights (:func:`evaluation_overrides`);
- fingerprints of the backbone's weights, of the data splits read and of the code (:func:`versions`).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import platform
import subprocess
from dataclasses import fields
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf

from . import ood, registry, schema
from .backbones import checkpoint_path, sha256_file
from .data import DataError
from .data.core import open_split, resolve_source
from .plan import config_plan, grid_points, grid_values, has_key, with_point
from .train import resolve_device

# The groups of the resume key (README, "The results CSV"), as key_view leaves them. Not in it:
# the recipe's name (its values are in the groups it sets), results_csv, force, logger, and the
# code identity (every row records it in ``versions``).
RESULT_KEYS = ("task", "adapter", "backbone", "trainer", "protocol", "seed", "ood_task")

# Where each option that a trained model's evaluation may change goes in a row's key:
EVAL = "evaluation"        # the evaluation options (a new value: a new row of the same weights)
INFERENCE = "inference"    # evaluation options; the training key too when validation chooses the model
OUTSIDE = "outside"        # in no key: changes no number (``group.*``: every option of the group)
RUNTIME = "runtime"        # in no key but the device's type and ``compile`` (training key)
EVALUATION_OPTIONS: dict[str, str] = {
    "adapter.inference": INFERENCE, "adapter.mc_samples": INFERENCE,
    "ood_task": EVAL, "calibration": EVAL,
    "results_csv": OUTSIDE, "force": OUTSIDE,
    "data.dir": OUTSIDE, "data.cache_dir": OUTSIDE,
    "data.source": OUTSIDE,  # the key holds each task's resolved source instead
    "runtime.*": RUNTIME,
}
DATA_KEYS_NOT_IN_KEY = tuple(k.split(".", 1)[1] for k in EVALUATION_OPTIONS if k.startswith("data."))


def _of(role: str, prefix: str = "") -> tuple[str, ...]:
    return tuple(k[len(prefix):] for k, r in EVALUATION_OPTIONS.items() if r == role and k.startswith(prefix))


def accepts_override(key: str) -> bool:
    """Whether ``pvera-bench evaluate`` takes ``key`` (dotted) as an override."""
    return key in EVALUATION_OPTIONS or any(k.endswith(".*") and key.startswith(k[:-1]) for k in EVALUATION_OPTIONS)


def evaluation_overrides(cfg: Any) -> dict[str, Any]:
    """A run config's evaluation options (every key of :data:`EVALUATION_OPTIONS` it has) as
    overrides of a saved run's config."""
    c = plain_config(cfg)
    out: dict[str, Any] = {}
    for key in EVALUATION_OPTIONS:
        if key.endswith(".*"):
            group = key[:-2]
            out.update({f"{group}.{k}": v for k, v in (c.get(group) or {}).items()})
        elif has_key(c, key):
            node: Any = c
            for part in key.split("."):
                node = node[part]
            out[key] = node
    return out


# ---------------------------------------------------------------- the view of the config
def _drop(c: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    node: Any = c
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(last, None)


def key_view(c: Mapping[str, Any]) -> dict:
    """The resolved config ``c`` without what changes no number: the options marked ``label``
    (``protocol.name``, ``backbone.name``), the options no grid point reads (a Rule's
    ``used_when``: ``trainer.min_lr`` under ``schedule=constant``, the selection options of a
    protocol that selects nothing, ...), the adapter options its module declares unread
    (declared with the adapter's options, ``used_when``: PVeRA's ``mc_samples`` unless ``inference=mc``) and the base
    value of every key the grid sets. The grid is spelt one way: dotted keys, and a key with one
    value applied to the config instead (the same model as that value set directly)."""
    out = copy.deepcopy(dict(c))
    if isinstance(out.get("protocol"), dict):
        grid = grid_values(out["protocol"].get("grid"))
        out = with_point(out, {k: v[0] for k, v in grid.items() if len(v) == 1})
        out["protocol"]["grid"] = {k: v for k, v in grid.items() if len(v) > 1}
    points = [with_point(out, q) for q in grid_points((out.get("protocol") or {}).get("grid"))] or [out]
    for key in (out.get("protocol") or {}).get("grid") or {}:
        _drop(out, key)
    for group, rules in schema.GROUPS.items():
        if not isinstance(out.get(group), dict):
            continue
        for f in fields(rules):
            r = f.metadata["rule"]
            unread = r.used_when is not None and not any(r.used_when(p) for p in points)
            if f.name in out[group] and (r.label or unread):
                del out[group][f.name]
    if isinstance(out.get("adapter"), dict):
        for k in list(out["adapter"]):
            if k != "name" and not any(registry.option_used(p["adapter"]["name"], k, p["adapter"]) for p in points):
                del out["adapter"][k]
    return out


def plain_config(cfg: Any) -> dict:
    """A config as a plain dict (a DictConfig resolved)."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


# ---------------------------------------------------------------- the keys
def resume_key(cfg: DictConfig) -> dict[str, Any]:
    """Everything that changes a run's numbers, and nothing else: the groups of RESULT_KEYS as
    key_view leaves them, ``trainer.precision`` resolved (auto -> bf16 on CUDA, fp32 on CPU), the
    backbone's weights by content (:func:`backbone_fingerprint`, not the checkpoint's path), the
    device's type and ``runtime.compile``, the data options that shape the images, the resolved
    data source and the fingerprint of every split read."""
    c = plain_config(cfg)
    view = key_view(c)
    key = {k: view.get(k) for k in RESULT_KEYS}
    key["trainer"] = dict(key["trainer"] or {}, precision=resolved_precision(cfg))
    weights = backbone_fingerprint(c.get("backbone") or {})
    key["backbone"] = dict(key["backbone"] or {}, checkpoint=None, weights=weights)
    rt = c.get("runtime") or {}
    key["runtime"] = {"device": resolve_device(rt.get("device")).type, "compile": bool(rt.get("compile"))}
    key["data"] = {k: v for k, v in (c.get("data") or {}).items() if k not in DATA_KEYS_NOT_IN_KEY}
    key["data_source"] = data_source(c["task"], cfg)
    key["data_fingerprint"] = data_fingerprint(cfg)
    return key


def split_key(resolved: Mapping[str, Any], cfg: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(training key, evaluation options)`` from a resume key ``resolved`` and the config it
    came from. The adapter's inference options are evaluation options, and part of the training
    key too when validation scores (which they compute) choose the model (``Plan.chooses``)."""
    c = plain_config(cfg)
    train = copy.deepcopy(dict(resolved))
    evo: dict[str, Any] = {}
    for k in _of(EVAL):
        train.pop(k, None)
        evo[k] = c.get(k)
    adapter = dict(train.get("adapter") or {})
    present = {k: adapter[k] for k in _of(INFERENCE, "adapter.") if k in adapter}
    if present:
        evo["adapter"] = present
        if not config_plan(c).chooses:
            for k in present:
                adapter.pop(k)
            train["adapter"] = adapter
    task = c["task"]["name"]
    fp = dict(train.get("data_fingerprint") or {})
    other = {k: v for k, v in fp.items() if k.split("/")[0] != task}
    if other:  # the OOD tasks' test splits are read by evaluation only
        train["data_fingerprint"] = {k: v for k, v in fp.items() if k not in other}
        evo["ood_data"] = other
    return train, evo


def run_keys(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(training key, evaluation options)`` of a config."""
    return split_key(resume_key(cfg), cfg)


def digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def key_hash(train: Mapping[str, Any], evo: Mapping[str, Any]) -> str:
    """A row's key (``config_hash``): its training key and its evaluation options."""
    return digest({"train": train, "eval": evo})


def setting_of(train: Mapping[str, Any], evo: Mapping[str, Any]) -> str:
    """The key without the seed (``setting``): rows of one setting differ only in their seed."""
    return digest({"train": {k: v for k, v in train.items() if k != "seed"}, "eval": evo})


def config_hash(cfg: DictConfig) -> str:
    """A row's key: its training key and evaluation options."""
    return key_hash(*run_keys(cfg))


def resolved_precision(cfg: DictConfig) -> str:
    p = str(cfg.trainer.get("precision", "auto"))
    if p != "auto":
        return p
    return "bf16" if resolve_device(cfg.runtime.get("device")).type == "cuda" else "fp32"


# ---------------------------------------------------------------- fingerprints
def backbone_fingerprint(bb: Mapping[str, Any]) -> str | None:
    """The identity of the backbone's weights: ``sha256:<hex>`` of a local ``checkpoint`` file (so
    a replaced file is another key, a moved one is not); for hub weights :func:`hub_revision`;
    None for random weights (``model``, ``kwargs`` and ``init_seed`` say all)."""
    if bb.get("checkpoint"):
        path = checkpoint_path(bb["checkpoint"])  # package:REL is a file shipped in the package
        try:
            st = path.stat()
        except OSError:
            return "missing"  # the run fails on it with the full message
        return "sha256:" + _file_sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)
    if not bb.get("pretrained") or bb.get("random_weights"):
        return None
    return hub_revision(str(bb.get("model")))


@functools.lru_cache(maxsize=8)  # keyed by size and mtime too: a file replaced in-process is read again
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def hub_revision(model_name: str) -> str | None:
    """``hub:<repo>[@<revision>]``: the Hugging Face Hub weights timm loads for ``model_name`` (its
    ``hf_hub_id``, which carries the revision when timm pins one); None for a model without hub
    weights. (Not the commit of a cached snapshot: it is unknown before the first download, and a
    run that downloads must not get another key than its rerun.)"""
    from timm.models import get_pretrained_cfg  # timm's model registry: only when the key needs it

    try:
        pcfg = get_pretrained_cfg(model_name)
    except Exception:  # noqa: BLE001 - an unknown model: the run fails on it with the full message
        return None
    repo = getattr(pcfg, "hf_hub_id", None) if pcfg is not None else None
    return f"hub:{repo}" if repo else None


def data_source(task: Mapping[str, Any], cfg: Any) -> str:
    """The source ``task`` is read from under config ``cfg`` (a task's own ``source`` wins)."""
    return resolve_source(task, cfg["data"]["source"])


def data_fingerprint(cfg: Any) -> dict[str, str]:
    """The source fingerprint of every split the protocol reads (``Plan.splits_read``) and of the
    OOD tasks' test splits."""
    c = plain_config(cfg)
    task, data_dir = c["task"], c["data"].get("dir")
    out = {f"{task['name']}/{s}": _split_fingerprint(task, s, data_source(task, c), data_dir)
           for s in config_plan(c).splits_read}
    try:
        others = ood.ood_configs(c.get("ood_task"), task["name"])
    except DataError:  # an unknown name: the run fails on it with the full message
        others = []
    for other in others:
        out[f"{other['name']}/test"] = _split_fingerprint(other, "test", data_source(other, c), data_dir)
    return out


def _split_fingerprint(task: Mapping, split: str, source: str, data_dir: str | None) -> str:
    return _cached_fingerprint(json.dumps(task, sort_keys=True), split, source, data_dir)


@functools.lru_cache(maxsize=64)  # one stat pass per split and process (a key is needed several times)
def _cached_fingerprint(task_json: str, split: str, source: str, data_dir: str | None) -> str:
    try:
        return open_split(json.loads(task_json), split, source=source, data_dir=data_dir).fingerprint
    except DataError as e:  # missing data: the run fails on it with the full message
        return f"unavailable: {type(e).__name__}"


@functools.lru_cache(maxsize=1)
def versions_info() -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version()}
    for pkg in ("pvera-bench", "torch", "timm", "tensorflow-datasets"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    out.update(git_identity(Path(__file__).resolve().parent.parent))
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    return out


def versions() -> str:
    """The code identity recorded in every row: package versions, and the commit of the git
    checkout the package runs from (``pvera-bench-commit``, ``pvera-bench-dirty``)."""
    return json.dumps(versions_info(), sort_keys=True)


def git_identity(src: Path) -> dict[str, Any]:
    """``{pvera-bench-commit, pvera-bench-dirty}`` when ``src`` is the top of a git checkout
    (an editable install); {} when it is not, or git is absent or fails."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    if not (src / ".git").exists():
        return {}
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"pvera-bench-commit": commit, "pvera-bench-dirty": dirty}
