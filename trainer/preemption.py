"""Stop cleanly when the scheduler or torchrun asks: the signal only sets a flag, and all ranks
agree at the next step boundary (so they save the same checkpoint), then SLURM requeues the job."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")


class StopRequest:
    """Set by a signal handler; read by the loop at step boundaries."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def install(self) -> None:
        for name in STOP_SIGNALS:
            signal.signal(getattr(signal, name), self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means now
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


def requeue_slurm_job() -> bool:
    """Ask SLURM to requeue this job (rank 0 only); the requeued job auto-resumes."""
    job_id = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return False
    if os.environ.get("SLURM_ARRAY_TASK_ID"):
        job_id = f"{job_id}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if result.returncode != 0:
        print(f"[poseforge] scontrol requeue {job_id} failed: {result.stderr.strip()}", file=sys.stderr)
        return False
    print(f"[poseforge] requeued SLURM job {job_id}", file=sys.stderr, flush=True)
    return True
