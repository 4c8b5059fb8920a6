"""A real one-node SLURM cluster on this machine, for end-to-end launch tests.

The `slurm_cluster` fixture installs Debian's `slurm-wlm` and `munge` when they are missing (as
root), starts munged, slurmctld and slurmd with a generated slurm.conf under a private temporary
directory (own munge socket and key, free ports, so nothing collides with a system SLURM), waits
until the node is idle, and at teardown cancels every job, stops the three daemons it started
(by pid) and deletes the directory. Tests reach the cluster through `SlurmCluster.env`, which
carries SLURM_CONF (sbatch exports it to jobs, so `scontrol requeue` inside a job finds it too).

Accounting (sacct) needs slurmdbd, so job states come from `scontrol show job`; MinJobAge keeps
finished jobs visible there for 10 minutes.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest

from tests.testlib import free_port

DAEMONS = ("slurmctld", "slurmd", "munged")
CLIENTS = ("sbatch", "scontrol", "scancel", "sinfo", "squeue", "srun")
FINISHED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                   "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


class SlurmCluster:
    """Handle on the running test cluster: run client commands and follow jobs."""

    def __init__(self, root: Path, node: str) -> None:
        self.root = root
        self.node = node
        self.conf = root / "slurm.conf"
        self.env = self.client_env(os.environ)

    def client_env(self, base: dict[str, str]) -> dict[str, str]:
        """`base` pointed at this cluster, without the variables of an enclosing SLURM job (CI
        running inside a job), which sbatch would otherwise read or pass on to our jobs."""
        kept = {name: value for name, value in base.items()
                if not name.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
        return {**kept, "SLURM_CONF": str(self.conf)}

    def run(self, *args: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def sbatch(self, script: str | Path, script_args: list[str], sbatch_options: list[str],
               cwd: Path, env: Optional[dict[str, str]] = None) -> int:
        """Submit `script` (with sbatch options and script arguments); return the job id.

        `env` (default: ours) is the submitting environment, which sbatch exports to the job."""
        result = subprocess.run(["sbatch", "--parsable", *sbatch_options, str(script), *script_args],
                                env=self.client_env(env or os.environ), cwd=cwd, capture_output=True,
                                text=True, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"sbatch failed ({result.returncode}): {result.stderr.strip()}")
        return int(result.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...)."""
        text = self.run("scontrol", "show", "job", "--oneliner", str(job_id)).stdout
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def wait_job(self, job_id: int, until: Callable[[dict[str, str]], bool], timeout: float,
                 what: str, log: Optional[Path] = None) -> dict[str, str]:
        """Poll the job until `until(job)` holds; fail with its state and log tail on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if until(job):
                return job
            if time.monotonic() > deadline:
                pytest.fail(f"job {job_id} not {what} after {timeout:.0f} s: "
                            f"JobState={job.get('JobState')} Reason={job.get('Reason')}\n"
                            + (log_tail(log) if log else ""))
            time.sleep(0.5)

    def wait_finished(self, job_id: int, timeout: float, log: Optional[Path] = None) -> dict[str, str]:
        return self.wait_job(job_id, lambda job: job.get("JobState") in FINISHED_STATES, timeout,
                             "finished", log)

    def cancel_all(self, timeout: float = 30) -> None:
        """Cancel every job and wait until the queue is empty (their processes are gone)."""
        self.run("scancel", "--full", "--user", "root", check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listed = self.run("squeue", "--noheader", "--states=all", "--format=%i %T", check=False)
            if not any(state in line for line in listed.stdout.splitlines()
                       for state in ("RUNNING", "COMPLETING", "PENDING", "CONFIGURING")):
                return
            time.sleep(0.5)


def log_tail(path: Optional[Path], lines: int = 60) -> str:
    if path is None or not path.exists():
        return f"(no log at {path})"
    return f"--- last {lines} lines of {path} ---\n" + "\n".join(
        path.read_text(errors="replace").splitlines()[-lines:])


def _ensure_installed() -> Optional[str]:
    """Install slurm-wlm and munge with apt-get when missing; the reason to skip, or None."""
    if all(shutil.which(name) for name in (*DAEMONS, *CLIENTS)):
        return None
    if not shutil.which("apt-get"):
        return "SLURM is not installed and there is no apt-get to install slurm-wlm and munge"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"],
                    ["apt-get", "install", "-y", "--no-install-recommends", "slurm-wlm", "munge"]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if result.returncode != 0 and command[1] == "install":
            return f"apt-get install slurm-wlm munge failed: {result.stderr.strip()[-500:]}"
    missing = [name for name in (*DAEMONS, *CLIENTS) if not shutil.which(name)]
    return f"installed slurm-wlm and munge but {missing} are missing" if missing else None


def _write_slurm_conf(root: Path, node: str) -> None:
    cpus = os.cpu_count() or 1
    # Ports are free now; a clash with a concurrent run would show up as a start-up failure.
    ctld_port, slurmd_port = free_port(), free_port()
    (root / "slurm.conf").write_text(f"""\
ClusterName=poseforge-test
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=600
KillWait=10
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")


def _start_munged(root: Path) -> None:
    munge = root / "munge"
    munge.mkdir(mode=0o711)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(128))  # a key of our own: the system key is never touched
    key.chmod(0o600)
    # -f: munged refuses to run as root otherwise.
    subprocess.run(["munged", "-f", f"--socket={munge}/munge.socket", f"--key-file={key}",
                    f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log",
                    f"--seed-file={munge}/munged.seed"], check=True, capture_output=True, timeout=30)


def _stop_daemon(pid_file: Path, timeout: float = 10) -> None:
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_node_idle(cluster: SlurmCluster, timeout: float) -> Optional[str]:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        result = cluster.run("sinfo", "--noheader", "--format=%T", check=False)
        state = result.stdout.strip() or result.stderr.strip()
        if state == "idle":
            return None
        time.sleep(0.5)
    return f"node not idle after {timeout:.0f} s (sinfo: {state!r})"


def _pid_files(root: Path) -> list[Path]:
    return [root / "slurmd.pid", root / "slurmctld.pid", root / "munge" / "munged.pid"]


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    if os.geteuid() != 0:
        pytest.skip("the SLURM tests start munged, slurmctld and slurmd as root: run them as root")
    reason = _ensure_installed()
    if reason:
        pytest.skip(reason)
    # A short path: the munge socket path must fit in a sockaddr_un (108 bytes).
    root = Path(tempfile.mkdtemp(prefix="pf-slurm-"))
    root.chmod(0o711)
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir()
    node = socket.gethostname().split(".")[0]  # what `hostname -s` prints and slurmd looks up
    cluster = SlurmCluster(root, node)
    try:
        _start_munged(root)
        _write_slurm_conf(root, node)
        for daemon in (["slurmctld", "-i"], ["slurmd"]):  # both fork into the background
            subprocess.run(daemon, env=cluster.env, check=True, capture_output=True, timeout=30)
        failure = _wait_node_idle(cluster, timeout=60)
    except (subprocess.SubprocessError, OSError) as error:
        failure = f"{type(error).__name__}: {error}"
    if failure:
        logs = "\n".join(log_tail(path, 15) for path in
                         (root / "log/slurmctld.log", root / "log/slurmd.log", root / "munge/munged.log"))
        for pid_file in _pid_files(root):
            _stop_daemon(pid_file)
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"a local SLURM could not start: {failure}\n{logs}")
    try:
        yield cluster
    finally:
        cluster.cancel_all()
        for pid_file in _pid_files(root):
            _stop_daemon(pid_file)
        shutil.rmtree(root, ignore_errors=True)
