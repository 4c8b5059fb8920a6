"""The persistent tracking state of one output directory (`mlflow_state.json`): the run id, the
byte offset of the metrics already sent, and the operations not yet sent. Written atomically after
every change, so a crash or a dead server loses nothing; `tracking-sync` reads it later.
"""
from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any, Optional

STATE_FILE = "mlflow_state.json"
# A dead or hung server costs seconds inside the sender, never MLflow's default minutes.
CLIENT_ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


def use_short_client_timeouts() -> None:
    """MLflow's client retries for minutes by default; the tracker and tracking-sync want seconds."""
    for name, value in CLIENT_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


def resolve_tracking_uri(config_uri: Optional[str], output_dir: str) -> str:
    """The config's uri, else MLFLOW_TRACKING_URI, else a sqlite file in the output dir (no server)."""
    uri = config_uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{os.path.abspath(os.path.join(output_dir, 'mlflow.db'))}"


class Journal:
    """Persistent tracking state of one output dir; written atomically after each change."""

    def __init__(self, output_dir: str) -> None:
        self.path = Path(output_dir) / STATE_FILE
        self._lock = threading.Lock()
        self.data: dict[str, Any] = {"run_id": None, "metrics_offset": 0, "pending": []}
        if self.path.exists():
            try:
                self.data.update(json.loads(self.path.read_text()))
            except ValueError:
                print(f"warning: {self.path} is unreadable: starting a new tracking journal", file=sys.stderr)

    def save(self) -> None:
        # The tracker's thread and, after a finish timeout, the main thread both save.
        with self._lock:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self.data, indent=1))
            os.replace(tmp, self.path)
