"""Sweeps through a real SLURM: Debian's slurmctld, slurmd and munge, started here as a one-node
cluster on localhost with a throwaway slurm.conf (SLURM_CONF) and a generated munge key.

The cluster has 2 CPUs in a partition named ``batch`` (not ``gpu``), no GPUs, no cgroups
(proctrack/linuxproc), no accounting. Installs the packages with apt-get when they are missing
(CI installs them first); skipped, with the reason, only where that is impossible (not root, no apt).
Every daemon started here is stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pvera_bench import results
from pvera_bench.slurm import check, SlurmError

pytestmark = pytest.mark.slow

PACKAGES = ("slurmctld", "slurmd", "munge")
BINARIES = ("slurmctld", "slurmd", "munged", "sbatch", "sinfo", "scontrol", "squeue")
PARTITION = "batch"
SWEEP = ["-m", "hydra/launcher=slurm_cpu", f"hydra.launcher.partition={PARTITION}", "task=demo",
         "backbone=vit_tiny_random", "protocol=holdout", "runtime.progress=false"]


def _have_slurm() -> bool:
    return all(shutil.which(b) or Path("/usr/sbin", b).exists() for b in BINARIES)


def _install_or_skip() -> None:
    if _have_slurm():
        return
    if os.geteuid() != 0:
        pytest.skip("SLURM (slurmctld, slurmd, munge) is not installed and installing it needs root")
    if shutil.which("apt-get") is None:
        pytest.skip("SLURM (slurmctld, slurmd, munge) is not installed and there is no apt-get to install it")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    p = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES], env=env,
                       capture_output=True, text=True)
    if p.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        p = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES], env=env,
                           capture_output=True, text=True)
    assert p.returncode == 0, f"apt-get install {' '.join(PACKAGES)} failed:\n{p.stdout[-2000:]}{p.stderr[-2000:]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, ok, timeout: float = 60, logs: tuple[Path, ...] = ()) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ok():
            return
        time.sleep(0.2)
    tails = "\n".join(f"--- {p}:\n{p.read_text()[-2000:]}" for p in logs if p.exists())
    raise AssertionError(f"{what} not within {timeout} s\n{tails}")


class Cluster:
    """A one-node SLURM cluster in ``root``: munged, slurmctld and slurmd in the foreground."""

    def __init__(self, root: Path, cpus: int = 2):
        self.root, self.cpus = root, cpus
        self.procs: list[subprocess.Popen] = []
        sbin = "/usr/sbin"
        self.path = f"{os.environ.get('PATH', '')}:{sbin}"
        self.conf = root / "slurm.conf"
        self.client_env = dict(SLURM_CONF=str(self.conf), PATH=self.path)  # what a SLURM client needs
        self.env = dict(os.environ, **self.client_env)

    def _bin(self, name: str) -> str:
        return shutil.which(name, path=self.path) or name

    def start(self) -> None:
        r = self.root
        for d in ("state", "spool", "munge"):
            (r / d).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        self.socket = r / "munge" / "munge.socket"
        host = socket.gethostname().split(".")[0]
        mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
        self.conf.write_text(f"""\
ClusterName=pverabench
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.socket},cred_expire=10
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
KillWait=5
MinJobAge=600
JobRequeue=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=8:00:00 State=UP
PartitionName=hidden Nodes={host} Hidden=YES MaxTime=1:00:00 State=UP
""")
        self._spawn([self._bin("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={self.socket}",
                     f"--pid-file={r}/munge/munged.pid", f"--log-file={r}/munge/munged.log",
                     f"--seed-file={r}/munge/munged.seed"], r / "munged.out")
        _wait("munged", self.socket.exists, 30, (r / "munge" / "munged.log", r / "munged.out"))
        self._spawn([self._bin("slurmctld"), "-D", "-c", "-i"], r / "slurmctld.out")
        self._spawn([self._bin("slurmd"), "-D", "-N", host], r / "slurmd.out")
        logs = (r / "slurmctld.log", r / "slurmd.log", r / "slurmctld.out", r / "slurmd.out")
        _wait("the node idle", lambda: "idle" in self.run("sinfo", "--noheader", "--format=%t").stdout, 90, logs)

    def _spawn(self, cmd: list[str], out: Path) -> None:
        f = open(out, "w")
        self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=f, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def run(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run([self._bin(cmd[0]), *cmd[1:]], env=self.env, capture_output=True, text=True,
                              timeout=60)

    def stop(self) -> None:
        if self.procs:
            self.run("scancel", "--full", f"--partition={PARTITION}")
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    _install_or_skip()
    if os.geteuid() != 0:
        pytest.skip("starting slurmd and munged needs root")
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def test_check_reports_requests_the_partition_cannot_run(cluster, cli):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(cluster.conf))
        mp.setenv("PATH", cluster.path)
        req = check({"partition": PARTITION, "timeout_min": 10, "cpus_per_task": 2, "mem_gb": 1})
        assert (req.cpus, req.mem_mb, req.gpus) == (2, 1024, 0)
        with pytest.raises(SlurmError, match="4 CPUs per node requested, but the largest node of partition 'batch' has 2"):
            check({"partition": PARTITION, "timeout_min": 10, "cpus_per_task": 2, "tasks_per_node": 2})
        with pytest.raises(SlurmError, match="timeout_min=481 exceeds the time limit of partition 'batch' \\(480 min\\)"):
            check({"partition": PARTITION, "timeout_min": 481})
        # a hidden partition is seen; a comma-separated list passes when one of its partitions can run the job
        assert check({"partition": "hidden", "timeout_min": 30}).partition == "hidden"
        assert check({"partition": f"hidden,{PARTITION}", "timeout_min": 120}).time_min == 120
        with pytest.raises(SlurmError, match="timeout_min=120 exceeds the time limit of partition 'hidden' \\(60 min\\)"):
            check({"partition": "hidden", "timeout_min": 120})
    # the command line: one line, exit 2, before anything is submitted (slurm_gpu on a node without GPUs)
    p = cli("-m", "hydra/launcher=slurm_gpu", f"hydra.launcher.partition={PARTITION}", "adapter=lora",
            "task=demo", "backbone=vit_tiny_random", env=cluster.client_env)  # weights at hand: the SLURM check speaks
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert "1 GPUs per node requested, but the largest node of partition 'batch' has 0" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    p = cli("-m", "hydra/launcher=slurm_cpu", "hydra.launcher.partition=gpu", "adapter=lora", "task=demo",
            "backbone=vit_tiny_random", env=cluster.client_env)
    assert p.returncode == 2 and "SLURM has no partition 'gpu'; set hydra.launcher.partition to one of (or a comma-separated list " \
        "of): batch, hidden" in p.stderr
    assert cluster.run("squeue", "--noheader").stdout.strip() == ""  # nothing was submitted


def _rows(path: Path) -> list[dict]:
    return results.read(path) if path.exists() else []


def test_sweep_lands_each_row_once(cluster, cli, tmp_path):
    csv = tmp_path / "results" / "results.csv"
    p = cli(*SWEEP, "adapter=lora,vera", "trainer.epochs=2", env=cluster.client_env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    got = _rows(csv)
    assert sorted(r["adapter"] for r in got) == ["lora", "vera"] and all(r["status"] == "ok" for r in got), got
    # the jobs went through sbatch as configured: --requeue, 1 CPU each, no GPU; logs under .submitit
    (sweep,) = (tmp_path / "multirun").glob("*/*")
    scripts = list(sweep.glob(".submitit/*/*_submission.sh"))
    assert scripts, list(sweep.rglob("*"))
    script = scripts[0].read_text()
    assert "#SBATCH --requeue" in script and "#SBATCH --cpus-per-task=1" in script
    assert f"#SBATCH --partition={PARTITION}" in script and "gpu" not in script
    logs = list(sweep.glob(".submitit/*/*_log.out"))
    assert len(logs) == 2 and all("torch CPU threads: 1" in f.read_text() for f in logs)  # SLURM_CPUS_PER_TASK
    assert not any((tmp_path / "checkpoints").glob("*"))  # no checkpoint directory left behind
    # the same command again: both found in the CSV, nothing new recorded
    p = cli(*SWEEP, "adapter=lora,vera", "trainer.epochs=2", env=cluster.client_env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(_rows(csv)) == 2 and p.stdout.count("recorded earlier") == 2, p.stdout


def test_requeued_run_resumes_from_its_checkpoint(cluster, cli, tmp_path, cache_dir):
    """A run requeued half-way (scontrol requeue, as on preemption) resumes from its last checkpoint
    and ends with exactly the numbers of the same run left alone (cluster: JobRequeue=0, so only
    the launcher's --requeue lets it come back)."""
    # long enough that the job is still training when SLURM's SIGKILL follows its SIGTERM (KillWait=5):
    # submitit only logs SIGTERM, and a run that ends first is never requeued
    args = ["adapter=lora", "trainer.epochs=40", "runtime.checkpoint_every=1", "seed=3"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PVERA_BENCH_CACHE=str(cache_dir), OMP_NUM_THREADS="1",
               HF_HOME=str(tmp_path / "hf-home"), PYTHONUNBUFFERED="1", **cluster.client_env)
    out = tmp_path / "sweep.out"
    with open(out, "w") as f:
        sweep = subprocess.Popen([sys.executable, "-m", "pvera_bench.cli", *SWEEP, *args], cwd=tmp_path, env=env,
                                 stdout=f, stderr=subprocess.STDOUT)
    try:
        _wait("a checkpoint", lambda: any((tmp_path / "checkpoints").glob("*/*.safetensors")) or sweep.poll() is not None,
              300, (out,))
        assert sweep.poll() is None, out.read_text()[-3000:]
        jobs = cluster.run("squeue", "--noheader", "--format=%i").stdout.split()
        assert len(jobs) == 1, jobs
        p = cluster.run("scontrol", "requeue", jobs[0])
        assert p.returncode == 0, p.stderr
        sweep.wait(600)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, out.read_text()[-3000:]
    (row,) = _rows(tmp_path / "results" / "results.csv")
    assert row["status"] == "ok"
    (log,) = (tmp_path / "multirun").glob("*/*/.submitit/*/*_log.out")
    text = log.read_text()
    assert "resuming" in text and "from its checkpoint after epoch" in text, text[-3000:]
    assert not any((tmp_path / "checkpoints").glob("*"))
    # the same run, uninterrupted, outside SLURM with the same threads
    p = cli("-m", *SWEEP[3:], *args, "runtime.threads=1", "results_csv=alone.csv", "runtime.checkpoint_dir=alone")
    assert p.returncode == 0, p.stderr[-3000:]
    (alone,) = _rows(tmp_path / "alone.csv")
    for k in ("test_acc", "test_nll", "val_acc", "test_ece"):
        assert float(row[k]) == pytest.approx(float(alone[k]), rel=1e-6, abs=1e-9), (k, row[k], alone[k])
