"""`mlflow models serve` for a pose model, on loopback, as one process group; and its request format.

POST /invocations with JSON (the README's curl example):
  {"dataframe_records": [{"image": "<base64 of the JPEG/PNG bytes>", "boxes": [[x, y, w, h], ...]}, ...]}
`boxes` is optional per record (floats; missing or null: the whole image is one person). The
answer is {"predictions": [{"image_index", "person_index", "box", "score", "keypoints"}, ...]},
the rows of the pyfunc's DataFrame. Used by the serving test and `bench inference`.
"""
from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional, Sequence


def request_body(images: Sequence[bytes], boxes: Optional[Sequence[Any]] = None) -> bytes:
    """The /invocations JSON for encoded images (+ optional per-image boxes)."""
    records = []
    for index, data in enumerate(images):
        record: dict[str, Any] = {"image": base64.b64encode(data).decode("ascii")}
        if boxes is not None and boxes[index] is not None:
            record["boxes"] = [[float(v) for v in box] for box in boxes[index]]
        records.append(record)
    return json.dumps({"dataframe_records": records}).encode()


class ModelServer:
    """`mlflow models serve -m URI --env-manager local` on 127.0.0.1:port in its own process group."""

    def __init__(self, model_uri: str, port: int, log_path: str, env: Optional[dict[str, str]] = None) -> None:
        self.model_uri, self.port, self.log_path = model_uri, port, log_path
        self.env = {**os.environ, **(env or {})}
        # MLflow execs `uvicorn` by name: this interpreter's scripts must come first on PATH.
        self.env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), self.env.get("PATH", "")])
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180.0) -> "ModelServer":
        mlflow_cli = str(Path(sys.executable).with_name("mlflow"))  # the CLI of this environment
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [mlflow_cli, "models", "serve", "-m", self.model_uri, "--env-manager", "local",
                 "-h", "127.0.0.1", "-p", str(self.port), "-w", "1"],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        if not wait_until_answering(self.process, f"{self.url}/ping", timeout_s):
            log = Path(self.log_path).read_text(errors="replace")[-2000:]
            self.stop()
            raise RuntimeError(f"mlflow models serve on port {self.port} not ready after {timeout_s} s "
                               f"(or exited): {log}")
        return self

    def invoke(self, body: bytes, timeout_s: float = 120.0) -> list[dict[str, Any]]:
        request = urllib.request.Request(f"{self.url}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())["predictions"]

    def stop(self) -> None:
        """SIGTERM the group (server and its uvicorn worker), SIGKILL what is left after 10 s."""
        if self.process is None:
            return
        stop_process_group(self.process)
        _wait_group_gone(self.process.pid, timeout_s=10.0)  # orphaned workers are reaped by init
        self.process = None

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until_answering(process: subprocess.Popen, url: str, timeout_s: float) -> bool:
    """True once `url` answers 200; False when `process` exits first or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.3)
    return False


def stop_process_group(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM a server started with start_new_session=True and its whole process group, then
    SIGKILL whatever is left after `grace_s`; returns once the leader has exited."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _wait_group_gone(group: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
