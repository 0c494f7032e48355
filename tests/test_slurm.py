"""SLURM launchers without a cluster: their configs, the request arithmetic of the pre-submit
check, CPU threads, checkpoint directories. (Against a real SLURM: test_slurm_cluster.py.)"""

from __future__ import annotations

import os

import pytest
from hydra import compose, initialize_config_dir

from pvera_bench.paths import config_dir
from pvera_bench.assemble import cpu_threads
from pvera_bench import slurm
from pvera_bench.slurm import (Node, Partition, Request, SlurmError, fit_problems, gres_gpus, parse_partitions,
                               parse_time, partition_of, problems, request_of, requested_partitions)


def launcher(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={name}", "task=demo", *overrides], return_hydra_config=True)
    return cfg.hydra.launcher


def test_launchers_request_what_they_document():
    gpu = launcher("slurm_gpu")
    assert gpu.additional_parameters == {"requeue": True}  # --requeue: JobRequeue=0 clusters requeue it too
    assert (gpu.gpus_per_node, gpu.cpus_per_task, gpu.mem_gb, gpu.timeout_min, gpu.max_num_timeout) == (1, 8, 48, 240, 3)
    assert request_of(gpu) == Request(None, 240, 8, 48 * 1024, 1)
    cpu = launcher("slurm_cpu", "hydra.launcher.partition=batch", "hydra.launcher.account=p1",
                   "+hydra.launcher.additional_parameters.reservation=maint")
    assert cpu.additional_parameters == {"requeue": True, "reservation": "maint"} and cpu.account == "p1"
    assert cpu.gpus_per_node is None and cpu.gres is None
    assert request_of(cpu) == Request("batch", 240, 1, 4096, 0)


def test_cfg_hydra_shows_the_requeue_flag(cli):
    p = cli("hydra/launcher=slurm_gpu", "adapter=lora", "task=demo", "--cfg", "hydra")
    assert p.returncode == 0, p.stderr
    launcher_text = p.stdout[p.stdout.index("  launcher:"):p.stdout.index("  sweeper:")]
    assert "additional_parameters:\n      requeue: true" in launcher_text


def test_slurm_time_and_gres_formats():
    assert parse_time("UNLIMITED") is None and parse_time("infinite") is None
    assert parse_time("8:00:00") == 480
    assert parse_time("1-00:00:00") == 1440
    assert parse_time("2-12") == 2 * 1440 + 12 * 60  # days-hours
    assert parse_time("30") == 30 and parse_time("30:30") == 30.5
    assert gres_gpus("(null)") == 0
    assert gres_gpus("gpu:a100:4(S:0-1)") == 4
    assert gres_gpus("gpu:2,shard:8") == 2
    assert gres_gpus("gpu:v100:2(S:0),gpu:a100:1(S:1)") == 3


def test_memory_and_cpu_requests_per_node():
    base = {"timeout_min": 10, "tasks_per_node": 2, "cpus_per_task": 3}
    assert request_of(base).cpus == 6 and request_of(base).mem_mb is None
    assert request_of(dict(base, mem_per_cpu="2G")).mem_mb == 6 * 2048
    assert request_of(dict(base, gres="gpu:a100:2", mem_per_gpu="10G")).mem_mb == 20 * 1024
    assert request_of(dict(base, gpus_per_task=1)).gpus == 2


def test_problems_name_the_request_that_does_not_fit():
    part = Partition("batch", 480, "UP", [Node("n1", 2, 8000, 0), Node("n2", 16, 4000, 0)])
    assert problems(Request("batch", 60, 2, 4000, 0), part) == []
    (msg,) = problems(Request("batch", 60, 8, None, 1), part)[:1]
    assert msg.startswith("1 GPUs per node requested, but the largest node of partition 'batch' has 0")
    assert "slurm_cpu" in msg
    out = problems(Request("batch", 481, 32, 16 * 1024, 0), part)
    assert out == ["hydra.launcher.timeout_min=481 exceeds the time limit of partition 'batch' (480 min)",
                   "32 CPUs per node requested, but the largest node of partition 'batch' has 16 (lower "
                   "hydra.launcher.cpus_per_task)",
                   "16 GB memory per node requested, but the largest node of partition 'batch' has 7.8125 GB "
                   "(lower hydra.launcher.mem_gb)"]
    # each fits some node, no node fits both
    assert problems(Request("batch", 60, 8, 6000, 0), part) == [
        "no node of partition 'batch' has 0 GPUs, 8 CPUs and 5.85938 GB together"]
    assert problems(Request("batch", 60, 1, None, 0), Partition("batch", None, "DOWN", part.nodes)) == [
        "partition 'batch' is DOWN"]


def test_threads_follow_slurm_then_omp_then_affinity(monkeypatch):
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cpu_threads(None) == len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_threads(None) is None  # torch's own reading of OMP_NUM_THREADS
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert cpu_threads(None) == 3
    assert cpu_threads(5) == 5


def test_checkpoint_directory_goes_with_its_last_checkpoint(cli, tmp_path):
    p = cli("adapter=lora", "backbone=vit_tiny_random", "task=demo", "protocol=holdout", "trainer.epochs=2",
            "runtime.checkpoint_every=1", "runtime.progress=false")
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "checkpoints").is_dir() and list((tmp_path / "checkpoints").iterdir()) == []


# ``scontrol --all --oneliner show partition`` as SLURM 22.05 (Debian bookworm) prints it: one line per
# partition; a hidden partition is listed only with --all. TRES holds commas and '=' inside its value.
SCONTROL = (
    "PartitionName=batch AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=YES QoS=N/A "
    "DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED "
    "MaxTime=08:00:00 MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=c[1-2] PriorityJobFactor=1 "
    "PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP "
    "TotalCPUs=16 TotalNodes=2 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED "
    "MaxMemPerNode=UNLIMITED TRES=cpu=16,mem=31000M,node=2,billing=16\n"
    "PartitionName=gpu AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=NO QoS=N/A "
    "DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=YES MaxNodes=UNLIMITED "
    "MaxTime=1-00:00:00 MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=g1 PriorityJobFactor=1 PriorityTier=1 "
    "RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP TotalCPUs=32 "
    "TotalNodes=1 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED "
    "TRES=cpu=32,mem=250000M,node=1,billing=32,gres/gpu=4\n")
SINFO = {"batch": "c1|8|15500|(null)\nc2|8|15500|(null)\n", "gpu": "g1|32|250000+|gpu:a100:4(S:0-1)\n"}


def test_partitions_parse_real_scontrol_output_with_hidden_ones():
    fields = parse_partitions(SCONTROL)
    assert [f["PartitionName"] for f in fields] == ["batch", "gpu"]
    assert fields[1]["Hidden"] == "YES" and fields[0]["TRES"] == "cpu=16,mem=31000M,node=2,billing=16"
    gpu = partition_of(fields[1], SINFO["gpu"])
    assert (gpu.max_time_min, gpu.state, gpu.nodes) == (1440, "UP", [Node("g1", 32, 250000, 4)])


def test_comma_separated_partitions_pass_when_one_can_run_the_job():
    fields = {f["PartitionName"]: f for f in parse_partitions(SCONTROL)}
    parts = {n: partition_of(f, SINFO[n]) for n, f in fields.items()}
    gpu_job = Request("gpu,batch", 60, 8, 8 * 1024, 1)
    assert requested_partitions(gpu_job, list(fields), "batch") == ["gpu", "batch"]
    assert fit_problems(gpu_job, [parts["gpu"], parts["batch"]]) == []  # gpu can run it; batch cannot
    assert fit_problems(gpu_job, [parts["batch"]]) != []
    assert requested_partitions(Request(None, 1, 1, None, 0), list(fields), "batch") == ["batch"]
    with pytest.raises(SlurmError, match="no partition 'gpux'"):
        requested_partitions(Request("batch,gpux", 1, 1, None, 0), list(fields), "batch")
    both = fit_problems(Request("batch,gpu", 2000, 1, None, 0), [parts["batch"], parts["gpu"]])
    assert both == ["hydra.launcher.timeout_min=2000 exceeds the time limit of partition 'batch' (480 min)",
                    "hydra.launcher.timeout_min=2000 exceeds the time limit of partition 'gpu' (1440 min)"]


def test_check_asks_scontrol_and_sinfo_for_hidden_partitions(monkeypatch):
    """As SLURM 22.05 does (tests/test_slurm_cluster.py runs the real one), the stand-in lists a hidden
    partition in scontrol only with --all; sinfo shows a partition named with --partition, and
    refuses --all with --partition."""
    import subprocess

    calls = []

    def run(*cmd):
        calls.append(cmd)
        if cmd[0] == "scontrol":
            text = SCONTROL if "--all" in cmd else SCONTROL.splitlines(keepends=True)[0]
        else:
            if "--all" in cmd:
                return subprocess.CompletedProcess(cmd, 1, "", "sinfo: error: Conflicting options, -a and -p")
            text = SINFO[cmd[cmd.index("--partition") + 1]]
        return subprocess.CompletedProcess(cmd, 0, text, "")

    monkeypatch.setattr(slurm, "_run", run)
    monkeypatch.setattr(slurm.shutil, "which", lambda name: f"/usr/bin/{name}")
    req = slurm.check({"partition": "gpu,batch", "timeout_min": 60, "gpus_per_node": 1, "cpus_per_task": 8})
    assert req.gpus == 1 and [c[0] for c in calls] == ["scontrol", "sinfo", "sinfo"]
    with pytest.raises(SlurmError, match="1 GPUs per node requested, but the largest node of partition 'batch'"):
        slurm.check({"partition": "batch", "timeout_min": 60, "gpus_per_node": 1})
