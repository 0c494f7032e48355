"""SLURM: before a sweep is submitted, check that SLURM can run its jobs as requested.

SLURM accepts a job no node of its partition can ever run and leaves it PENDING
``(PartitionConfig)`` or ``(Resources)`` forever, while the sweep waits silently. The
:class:`SlurmCheck` Hydra callback reads the partitions (``scontrol --all show partition``, so
hidden ones too; ``sinfo --partition``, which shows a hidden partition named) before any job is submitted and stops with one line that
names the request that does not fit: the partition name, the time limit, GPUs, CPUs or memory. A
comma-separated ``partition=gpu,cpu`` (SLURM starts the job in whichever can first) passes when
any of them can run it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SlurmError(Exception):
    """A request SLURM cannot schedule (the message says which, and what to override)."""


@dataclass
class Node:
    name: str
    cpus: int
    mem_mb: int
    gpus: int


@dataclass
class Partition:
    name: str
    max_time_min: float | None  # None: unlimited
    state: str
    nodes: list[Node] = field(default_factory=list)


@dataclass
class Request:
    partition: str | None
    time_min: float
    cpus: int  # per node
    mem_mb: int | None  # per node; None: SLURM's default
    gpus: int  # per node
    nodes: int = 1


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def parse_time(text: str) -> float | None:
    """Minutes in a SLURM time limit (``UNLIMITED``, ``infinite``, ``[days-]hours:minutes:seconds``,
    ``minutes``, ``minutes:seconds``); None when unlimited."""
    text = text.strip()
    if text.upper() in ("UNLIMITED", "INFINITE", "NONE", ""):
        return None
    days, _, rest = text.rpartition("-")
    parts = [float(p) for p in rest.split(":")]
    if days:  # days-hours[:minutes[:seconds]]
        parts += [0.0] * (3 - len(parts))
        h, m, s = parts
    elif len(parts) == 3:
        h, m, s = parts
    elif len(parts) == 2:
        h, m, s = 0.0, parts[0], parts[1]
    else:
        h, m, s = 0.0, parts[0], 0.0
    return (float(days or 0) * 24 + h) * 60 + m + s / 60


def gres_gpus(gres: str) -> int:
    """GPUs in a gres string: ``gpu:a100:4(S:0-1),shard:8`` -> 4; ``(null)`` -> 0."""
    total = 0
    for item in re.split(r",(?![^()]*\))", gres or ""):
        item = re.sub(r"\(.*?\)", "", item).strip()
        fields = item.split(":")
        if fields[0] == "gpu":
            count = fields[-1] if len(fields) > 1 else "1"
            total += int(count) if count.isdigit() else 1
    return total


def _fields(text: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S*)", text))


def parse_partitions(text: str) -> list[dict[str, str]]:
    """The fields of each partition in ``scontrol --oneliner show partition`` output (one line each)."""
    return [f for f in map(_fields, text.splitlines()) if "PartitionName" in f]


def _partition_fields() -> list[dict[str, str]]:
    p = _run("scontrol", "--all", "--oneliner", "show", "partition")
    if p.returncode != 0:
        raise SlurmError(f"cannot read SLURM's partitions ({' '.join(p.stderr.split()) or 'scontrol failed'}); "
                         "is this a SLURM login node?")
    return parse_partitions(p.stdout)


def partition_of(f: dict[str, str], sinfo_text: str) -> Partition:
    """A :class:`Partition` from its scontrol fields and ``sinfo --Node --format %N|%c|%m|%G`` lines."""
    part = Partition(f["PartitionName"], parse_time(f.get("MaxTime", "UNLIMITED")), f.get("State", "UP"))
    for line in sinfo_text.splitlines():
        if line.strip():
            node, cpus, mem, gres = line.split("|", 3)
            part.nodes.append(Node(node.strip(), int(cpus), int(mem.rstrip("+")), gres_gpus(gres)))
    return part


def read_partition(name: str, fields: dict[str, str] | None = None) -> Partition:
    if fields is None:
        fields = next((f for f in _partition_fields() if f["PartitionName"] == name), None)
        if fields is None:
            raise SlurmError(f"no partition {name!r}")
    out = _run("sinfo", "--noheader", "--Node", "--partition", name, "--format", "%N|%c|%m|%G")  # -p shows hidden ones
    return partition_of(fields, out.stdout)


def request_of(launcher: DictConfig | dict) -> Request:
    """What a job of ``hydra.launcher`` (submitit_slurm keys) asks each node for."""
    get = launcher.get
    tasks = int(get("tasks_per_node") or 1)
    gpus = int(get("gpus_per_node") or 0) or int(get("gpus_per_task") or 0) * tasks or gres_gpus(str(get("gres") or ""))
    cpus = int(get("cpus_per_task") or 1) * tasks
    if get("cpus_per_gpu") and gpus:
        cpus = max(cpus, int(get("cpus_per_gpu")) * gpus)
    mem_mb = int(float(get("mem_gb")) * 1024) if get("mem_gb") else None
    if mem_mb is None and get("mem_per_cpu"):
        mem_mb = _mb(str(get("mem_per_cpu"))) * cpus
    if mem_mb is None and get("mem_per_gpu") and gpus:
        mem_mb = _mb(str(get("mem_per_gpu"))) * gpus
    return Request(get("partition"), float(get("timeout_min") or 0), cpus, mem_mb, gpus, int(get("nodes") or 1))


def _mb(text: str) -> int:
    """Megabytes in a SLURM memory size (``4000``, ``4G``, ``512M``, ``1T``)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", text.upper())
    if not m:
        raise SlurmError(f"cannot read the memory size {text!r}")
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[m.group(2)]
    return int(float(m.group(1)) * scale)


def _gb(mb: int) -> str:
    return f"{mb / 1024:g} GB"


def problems(req: Request, part: Partition) -> list[str]:
    """Why no node of ``part`` can ever run ``req`` (empty: it fits)."""
    out = []
    if part.state not in ("UP",):
        out.append(f"partition {part.name!r} is {part.state}")
    if part.max_time_min is not None and req.time_min > part.max_time_min:
        out.append(f"hydra.launcher.timeout_min={req.time_min:g} exceeds the time limit of partition "
                   f"{part.name!r} ({part.max_time_min:g} min)")
    if not part.nodes:
        return out + [f"partition {part.name!r} has no nodes"]
    if req.nodes > len(part.nodes):
        out.append(f"hydra.launcher.nodes={req.nodes} exceeds the {len(part.nodes)} nodes of partition {part.name!r}")
    wants = [("GPUs", req.gpus, lambda n: n.gpus, "hydra.launcher.gpus_per_node", str),
             ("CPUs", req.cpus, lambda n: n.cpus, "hydra.launcher.cpus_per_task", str),
             ("memory", req.mem_mb or 0, lambda n: n.mem_mb, "hydra.launcher.mem_gb", _gb)]
    for what, want, have, key, show in wants:
        most = max(have(n) for n in part.nodes)
        if want > most:
            hint = ("use hydra/launcher=slurm_cpu or a GPU partition" if what == "GPUs" and most == 0
                    else f"lower {key}")
            out.append(f"{show(want)} {what} per node requested, but the largest node of partition {part.name!r} "
                       f"has {show(most)} ({hint})")
    if not out and not any(n.gpus >= req.gpus and n.cpus >= req.cpus and n.mem_mb >= (req.mem_mb or 0)
                           for n in part.nodes):
        out.append(f"no node of partition {part.name!r} has {req.gpus} GPUs, {req.cpus} CPUs and "
                   f"{_gb(req.mem_mb or 0)} together")
    return out


def requested_partitions(req: Request, names: list[str], default: str | None) -> list[str]:
    """The partitions a job may run in: ``partition=gpu,cpu`` (SLURM starts it in whichever can
    first) or the default one; a SlurmError names one that does not exist."""
    wanted = [n.strip() for n in (req.partition or "").split(",") if n.strip()] or ([default] if default else [])
    if not wanted:
        raise SlurmError(f"this cluster has no default partition; set hydra.launcher.partition to one of: "
                         f"{', '.join(names)}")
    for name in wanted:
        if name not in names:
            raise SlurmError(f"SLURM has no partition {name!r}; set hydra.launcher.partition to one of (or a "
                             f"comma-separated list of): {', '.join(names)}")
    return wanted


def fit_problems(req: Request, parts: list[Partition]) -> list[str]:
    """Empty when some partition of ``parts`` can run ``req``; else why none can (each one's reasons)."""
    found = [problems(req, part) for part in parts]
    return [] if any(not f for f in found) else [p for f in found for p in f]


def check(launcher: DictConfig | dict) -> Request:
    """Raise :class:`SlurmError` unless SLURM can run a job of ``launcher`` (hydra.launcher) in one
    of the partitions it names (hidden partitions included)."""
    if shutil.which("sinfo") is None or shutil.which("scontrol") is None:
        raise SlurmError("hydra/launcher=slurm_* submits with sbatch, but SLURM's commands (sinfo, scontrol, sbatch) "
                         "are not on PATH; run the sweep on a SLURM login node")
    req = request_of(launcher)
    fields = {f["PartitionName"]: f for f in _partition_fields()}
    default = next((n for n, f in fields.items() if f.get("Default") == "YES"), None)
    wanted = requested_partitions(req, list(fields), default)
    found = fit_problems(req, [read_partition(n, fields[n]) for n in wanted])
    if found:
        raise SlurmError("SLURM cannot run these jobs as requested: " + "; ".join(found))
    return req


class SlurmCheck(Callback):
    """Before a sweep on a SLURM launcher submits anything: stop (exit 2, one line) on a request that
    no node of the partition can run. Other launchers are left alone."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        launcher = config.hydra.launcher
        if not str(launcher.get("_target_", "")).endswith(".SlurmLauncher"):
            return
        try:
            check(launcher)
        except SlurmError as e:
            print(f"pvera-bench: error: {e}", file=sys.stderr)
            sys.exit(2)
