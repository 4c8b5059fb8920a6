"""The tracker interface the training loop calls, and the two trackers without a server.

`LocalMetrics` always writes `<output_dir>/metrics.jsonl`: whatever happens to a tracking server,
nothing is lost, and the MLflow tracker (mlflow_run.py) sends metrics by tailing that file.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Protocol

METRICS_FILE = "metrics.jsonl"


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str, artifact_path: str | None = None) -> None: ...
    def log_eval(self, metrics: dict[str, float], step: int, predictions_path: str | None = None,
                 overlay_png: str | None = None) -> None: ...
    def register_best(self, checkpoint_path: str, metric_name: str, value: float, step: int) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Non-zero ranks (and tracking disabled): every call does nothing."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None: pass
    def set_tags(self, tags: dict[str, str]) -> None: pass
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: pass
    def log_artifact(self, path: str, artifact_path: str | None = None) -> None: pass

    def log_eval(self, metrics: dict[str, float], step: int, predictions_path: str | None = None,
                 overlay_png: str | None = None) -> None:
        self.log_metrics({f"eval/{k}": v for k, v in metrics.items()}, step)

    def register_best(self, checkpoint_path: str, metric_name: str, value: float, step: int) -> None: pass
    def finish(self, status: str = "FINISHED") -> None: pass


class LocalMetrics(NullTracker):
    """Appends every metric record to a JSON-lines file (flushed per record)."""

    def __init__(self, output_dir: str) -> None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        self.path = os.path.join(output_dir, METRICS_FILE)
        self._file = open(self.path, "a", buffering=1)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        record = {"step": step, "time": time.time(), **{k: float(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")

    def finish(self, status: str = "FINISHED") -> None:
        self._file.close()


def read_local_metrics(path: str) -> list[dict[str, float]]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]
