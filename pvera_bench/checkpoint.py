"""A run's state on disk until its row is appended (``RunState``), and the training checkpoints
in it: tensors in safetensors, everything else in JSON.

No pickles: a checkpoint holds the trainable tensors (adapter and head), the optimizer state,
the RNG states and the epoch loop's bookkeeping (the schedule is a function of the epoch), never
code. Every file is written by ``rundir.atomic_write``, so a job killed while saving leaves the
previous file; every tensor file is sealed (``rundir.seal``: a digest of each tensor in its
header) and checked when read: a truncated or corrupt file is set aside (renamed
``<name>.corrupt-<time>``), said in one log line, and what it held is trained again.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from . import rundir
from .rundir import CorruptFileError

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
    return tensors, dict(state["info"], optimizer=opt_meta)


def _unpack(tensors: dict[str, torch.Tensor], meta: dict, prefix: str = "") -> dict[str, Any]:
    mine = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    meta = dict(meta)
    missing = [k for k in ("epoch", "stamp", "selection", "history", "seconds") if k not in meta]
    if missing:  # written by an older version: not resumed (``load`` says so)
        raise KeyError(missing[0])
    optimizer = _unflatten_optimizer(mine, meta.pop("optimizer"))
    return dict(
        meta,
        trainable={k[6:]: v for k, v in mine.items() if k.startswith("param.")},
        best={k[5:]: v for k, v in mine.items() if k.startswith("best.")} or None,
        optimizer=optimizer,
        generator=mine["rng.generator"], torch_rng=mine["rng.torch"], cuda_rng=mine.get("rng.cuda"),
    )


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """``tensors`` (CPU) as a sealed safetensors file at ``path``, written atomically."""
    rundir.atomic_write(path, rundir.seal(save_bytes(tensors, metadata=metadata)))


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """The tensors and metadata of sealed file ``path``; None when there is none, or when it is
    corrupt: then it is set aside (:func:`set_aside`) so that its part is trained again."""
    if not path.is_file():
        return None
    try:
        blob, meta = rundir.read_sealed(path)
        return load_bytes(blob), meta
    except (CorruptFileError, OSError) as e:
        set_aside(path, e)
        return None


def set_aside(path: Path, why: Exception) -> None:
    """Rename a damaged state file out of the way, with one log line saying what happens next."""
    try:
        dest = rundir.set_aside(path).name
    except OSError:
        dest = "(could not be renamed)"
    log.warning("run state: %s; set aside as %s, and its part is trained again", " ".join(str(why).split()), dest)


def _write(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    write_tensors(path, tensors, {"pvera_bench": json.dumps(meta)})


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    read = read_tensors(path)
    if read is None:
        return None
    tensors, meta = read
    try:
        return tensors, json.loads(meta["pvera_bench"])
    except (KeyError, ValueError) as e:  # sealed but not a checkpoint: no checkpoint
        log.warning("ignoring checkpoint %s (it has no readable state: %s); training from the start", path, e)
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


class RunState:
    """Everything one run keeps until its CSV row is appended, owned in one place: the directory
    ``<runtime.checkpoint_dir>/<run key>/``, removed by ``clear`` only after the row is appended.

    - ``<tag>.safetensors``: an unfinished fit's checkpoint (``fit_path``; only when ``every`` > 0,
      the epochs between checkpoints), ``select-joint.safetensors``: a joint grid's round;
    - ``candidate-<i>.json`` (+ ``candidate-<i>.safetensors``, its kept weights): a finished grid
      candidate (``commit_candidate``);
    - ``model.json`` + ``model.safetensors``: the protocol's final model, before the test pass
      (``commit_model``);
    - ``record.json``: the run's result, before the CSV append (``commit_record``).

    Each ``commit_*`` writes its tensors first and its JSON last, each file atomically: a JSON
    file present means everything it names is saved. Other parts of the run keep their own files
    here with ``put_tensors`` / ``put_json`` (same rule). Every tensor file is sealed; opening the
    state checks them all (``check``). Without a directory (``RunState(None)``) nothing touches
    the disk: tensors and JSON are kept in memory for the run's lifetime."""

    def __init__(self, directory: str | Path | None, every: int = 0) -> None:
        self.dir = Path(directory) if directory else None
        self.every = int(every or 0)
        self._memory: dict[str, Any] = {}
        self.check()

    # the committed records that name a kept tensor file: a corrupt one takes them with it
    NAMED_BY = {"model": ("model",), "candidate-": ("candidate-{i}", "joint-grid")}

    def check(self) -> list[str]:
        """Check every tensor file of the state against its digests; set aside each corrupt one
        with the records that name it (``candidate-<i>``, ``joint-grid``, ``model``), so that what
        it held is trained again, once. Returns the names set aside."""
        if self.dir is None or not self.dir.is_dir():
            return []
        gone = []
        for path in sorted(self.dir.glob("*.safetensors")):
            try:
                rundir.read_sealed(path)
                continue
            except (CorruptFileError, OSError) as e:
                set_aside(path, e)
            gone.append(path.name)
            stem = path.name[: -len(".safetensors")]
            for prefix, records in self.NAMED_BY.items():
                if stem == prefix or (prefix.endswith("-") and stem.startswith(prefix)):
                    for rec in records:
                        self.drop(rec.format(i=stem[len(prefix):]) + ".json")
        return gone

    # -- generic files ------------------------------------------------------------------------------
    def _path(self, name: str) -> Path:
        return self.dir / name

    def put_tensors(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        if self.dir is None:
            self._memory[name + ".safetensors"] = cpu
            return
        write_tensors(self._path(name + ".safetensors"), cpu)

    def get_tensors(self, name: str) -> dict[str, torch.Tensor] | None:
        """The tensors of ``name``; None when absent or corrupt (set aside; see :meth:`check`)."""
        if self.dir is None:
            return self._memory.get(name + ".safetensors")
        read = read_tensors(self._path(name + ".safetensors"))
        return read[0] if read is not None else None

    def put_json(self, name: str, obj: Any) -> None:
        if self.dir is None:
            self._memory[name + ".json"] = json.loads(json.dumps(obj))
            return
        rundir.atomic_write(self._path(name + ".json"), json.dumps(obj))

    def get_json(self, name: str) -> Any | None:
        if self.dir is None:
            return self._memory.get(name + ".json")
        path = self._path(name + ".json")
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            set_aside(path, ValueError(f"{path} is unreadable ({e})"))
            return None

    def drop(self, name: str) -> None:
        """Remove file ``name`` (with its suffix), if any."""
        if self.dir is None:
            self._memory.pop(name, None)
        else:
            self._path(name).unlink(missing_ok=True)

    # -- what the protocol and the run keep ---------------------------------------------------------
    def fit_path(self, tag: str) -> Path | None:
        """Where fit ``tag`` checkpoints (None: no checkpoints)."""
        return self._path(f"{tag}.safetensors") if self.dir is not None and self.every else None

    def candidate(self, i: int, point: Any) -> dict[str, Any] | None:
        """Candidate ``i``'s committed record, if it was committed for ``point``."""
        rec = self.get_json(f"candidate-{i}")
        if rec is not None and rec.get("point") != json.loads(json.dumps(point)):
            log.warning("ignoring the record of candidate %d: it records %s, not %s", i, rec.get("point"), point)
            return None
        return rec

    def commit_candidate(self, i: int, rec: dict[str, Any], weights: dict[str, torch.Tensor] | None = None) -> None:
        """Candidate ``i`` is finished: its weights (when kept), then its record; its fit's
        checkpoint is no longer needed."""
        if weights is not None:
            self.put_tensors(f"candidate-{i}", weights)
        self.put_json(f"candidate-{i}", rec)
        self.drop(f"select-{i}.safetensors")

    def candidate_weights(self, i: int) -> dict[str, torch.Tensor] | None:
        return self.get_tensors(f"candidate-{i}")

    def drop_candidate_weights(self, i: int) -> None:
        self.drop(f"candidate-{i}.safetensors")

    def model(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
        """The committed final model: (its JSON info, its trainable weights)."""
        info = self.get_json("model")
        weights = self.get_tensors("model") if info is not None else None
        return (info, weights) if weights is not None else None

    def commit_model(self, info: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        self.put_tensors("model", weights)
        self.put_json("model", info)
        self.drop("final.safetensors")

    def record(self) -> dict[str, Any] | None:
        return self.get_json("record")

    def commit_record(self, record: dict[str, Any]) -> None:
        self.put_json("record", record)

    def clear(self) -> None:
        """Remove everything: called once the run's row is in the CSV."""
        self._memory.clear()
        if self.dir is not None and self.dir.is_dir():
            shutil.rmtree(self.dir, ignore_errors=True)
