"""Run tracking: what the loop logs, behind one small interface. Only rank 0 tracks.

`LocalMetrics` always writes `<output_dir>/metrics.jsonl`, so nothing is lost whatever happens
to a tracking server.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str, artifact_path: str | None = None) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Non-zero ranks (and tracking disabled): every call does nothing."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None: pass
    def set_tags(self, tags: dict[str, str]) -> None: pass
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: pass
    def log_artifact(self, path: str, artifact_path: str | None = None) -> None: pass
    def finish(self, status: str = "FINISHED") -> None: pass


class LocalMetrics(NullTracker):
    """Appends every metric record to a JSON-lines file (flushed per record)."""

    def __init__(self, output_dir: str) -> None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self._file = open(self.path, "a", buffering=1)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        record = {"step": step, "time": time.time(), **{k: float(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")

    def finish(self, status: str = "FINISHED") -> None:
        self._file.close()


def read_local_metrics(path: str) -> list[dict[str, float]]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def open_tracker(config: "Config", world: "WorldInfo", run_id: str | None) -> Tracker:
    """Rank 0 gets the real tracker; every other rank a NullTracker (one run per job, not per rank)."""
    if not world.is_main:
        return NullTracker()
    return LocalMetrics(config.output_dir)
