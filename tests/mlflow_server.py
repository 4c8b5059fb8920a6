"""A real `mlflow server` on loopback for tests: its own process group, killed whole at the end.

Use the `mlflow_server` fixture (from tests/conftest.py or `pytest_plugins`), or MlflowServer
directly when a test needs to stop and restart it on the same port and database.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Optional

import pytest

from tests.testlib import free_port
from trainer.inference.serving import stop_process_group, wait_until_answering

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


class MlflowServer:
    def __init__(self, root: Path, port: Optional[int] = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.process: Optional[subprocess.Popen] = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 90.0) -> "MlflowServer":
        log = open(self.root / "server.log", "ab")
        self.process = subprocess.Popen(
            [MLFLOW, "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # own process group
            # no background job workers: they only slow the start-up down
            env={**os.environ, "MLFLOW_TRACKING_URI": "", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        if not wait_until_answering(self.process, f"{self.uri}/health", timeout_s):
            log = (self.root / "server.log").read_text(errors="replace")[-2000:]
            self.stop()
            raise RuntimeError(f"mlflow server on port {self.port} not healthy after {timeout_s} s (or exited): {log}")
        return self

    def stop(self) -> None:
        """SIGTERM the whole group (server, gunicorn/uvicorn workers, job consumers), then SIGKILL."""
        if self.process is None:
            return
        stop_process_group(self.process)
        self.process = None

    def kill(self) -> None:
        """Abrupt death (SIGKILL to the group): what a crashed tracking host looks like."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
            self.process = None


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server")).start()
    try:
        yield server
    finally:
        server.stop()
