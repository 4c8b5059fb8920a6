"""Sends a journal's pending operations (params, tags, artifacts, plots, registration) and the
unsent part of metrics.jsonl to the MLflow run. Used by the tracker's thread and by tracking-sync.
Delivery is at-least-once: a crash between a send and the journal update re-sends that batch.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

from trainer.errors import CheckpointError
from trainer.tracking.base import METRICS_FILE
from trainer.tracking.info import MAX_TAG_LENGTH
from trainer.tracking.journal import Journal


class RunSender:
    """Sends a journal's pending operations and unsent metrics to its MLflow run."""

    def __init__(self, output_dir: str, journal: Journal, system_metrics: bool = False,
                 reopen: bool = True) -> None:
        self.output_dir = output_dir
        self.journal = journal
        self.system_metrics = system_metrics
        self.reopen = reopen  # False for tracking-sync: send records, leave the run's status alone
        self._client = None
        self._monitor = None

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient
            self._client = MlflowClient(tracking_uri=self.journal.data["tracking_uri"])
        return self._client

    def ensure_run(self) -> str:
        """The run id: resume the journal's run, or create one (experiment created if missing)."""
        data = self.journal.data
        if data["run_id"] and data.get("run_started"):
            return data["run_id"]
        if data["run_id"]:
            if self.reopen:
                self.client.update_run(data["run_id"], status="RUNNING")
            else:
                self.client.get_run(data["run_id"])  # fails clearly if the server does not know it
            resumed = True
        else:
            experiment = self.client.get_experiment_by_name(data["experiment"])
            if experiment is None:
                # "model training" (not GenAI) is what the MLflow UI should show for it
                experiment_id = self.client.create_experiment(
                    data["experiment"], artifact_location=data.get("artifact_location"),
                    tags={"mlflow.experimentKind": "custom_model_development"})
            else:
                experiment_id = experiment.experiment_id
            run = self.client.create_run(experiment_id, run_name=data.get("run_name"))
            data["run_id"], resumed = run.info.run_id, False
        data["run_started"] = True
        self.journal.save()
        self._start_system_metrics(data["run_id"], resumed)
        return data["run_id"]

    def _start_system_metrics(self, run_id: str, resumed: bool) -> None:
        if not self.system_metrics or self._monitor is not None:
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
            self._monitor = SystemMetricsMonitor(run_id, resume_logging=resumed,
                                                 tracking_uri=self.journal.data["tracking_uri"])
            self._monitor.start()
        except Exception as error:  # psutil missing, ...: system metrics are optional
            print(f"note: MLflow system metrics are off ({error})", file=sys.stderr)

    def flush(self) -> None:
        """Send everything pending; raises on the first failure (the journal keeps the rest)."""
        run_id = self.ensure_run()
        pending = self.journal.data["pending"]
        while pending and pending[0]["kind"] != "finish":
            try:
                self._send(run_id, pending[0])
            except Exception as error:
                if not _is_permanent(error):
                    raise  # server down or busy: keep it, retry later
                print(f"warning: tracking: dropped a {pending[0]['kind']} operation the server or the "
                      f"files refuse ({type(error).__name__}: {str(error)[:300]})", file=sys.stderr)
            pending.pop(0)
            self.journal.save()
        self._send_metrics(run_id)

    def terminate(self) -> bool:
        """Send a pending `finish` (run status); True when the run is closed."""
        pending = self.journal.data["pending"]
        if not pending or pending[0]["kind"] != "finish":
            return False
        self.stop_system_metrics()
        self.client.set_terminated(self.ensure_run(), status=pending[0]["status"])
        pending.pop(0)
        self.journal.data["run_started"] = False
        self.journal.save()
        return True

    def stop_system_metrics(self) -> None:
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None

    def _send(self, run_id: str, op: dict[str, Any]) -> None:
        from mlflow.entities import Param, RunTag
        kind = op["kind"]
        if kind == "params":
            existing = self.client.get_run(run_id).data.params
            new = {k: v for k, v in op["params"].items() if k not in existing}
            # MLflow refuses to change a param: a resumed run with a changed config says so in tags.
            changed = {f"resume_changed.{k}": v[:MAX_TAG_LENGTH] for k, v in op["params"].items()
                       if k in existing and existing[k] != v}
            items = sorted(new.items())
            for start in range(0, len(items), 100):
                self.client.log_batch(run_id, params=[Param(k, v) for k, v in items[start:start + 100]])
            if changed:
                self._send(run_id, {"kind": "tags", "tags": changed})
        elif kind == "tags":
            items = sorted(op["tags"].items())
            for start in range(0, len(items), 100):
                self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in items[start:start + 100]])
        elif kind == "artifact":
            if os.path.exists(op["path"]):
                self.client.log_artifact(run_id, op["path"], op.get("artifact_path"))
            else:
                print(f"warning: tracking: artifact {op['path']} is gone; not uploaded", file=sys.stderr)
        elif kind == "curves":
            from trainer.tracking.plots import draw_metric_curves
            png = draw_metric_curves(os.path.join(self.output_dir, METRICS_FILE),
                                     os.path.join(self.output_dir, "metric_curves.png"))
            if png:
                self.client.log_artifact(run_id, png)
        elif kind == "overlay":
            from shards.schema import load_schema
            from trainer.tracking.plots import draw_eval_overlay
            with open(op["predictions_path"]) as handle:
                records = json.load(handle)
            png = draw_eval_overlay(op["val_shards"], records, load_schema(op["schema"]).skeleton,
                                    op["out_png"])
            if png:
                self.client.log_artifact(run_id, png, op["artifact_path"])
        elif kind == "register":
            from trainer.tracking.registry import register_checkpoint
            register_checkpoint(self.client, run_id, **op["args"])
        else:
            raise ValueError(f"unknown tracking operation {kind!r}")

    def _send_metrics(self, run_id: str) -> None:
        from mlflow.entities import Metric
        path = os.path.join(self.output_dir, METRICS_FILE)
        offset = self.journal.data["metrics_offset"]
        if not os.path.exists(path) or os.path.getsize(path) <= offset:
            return
        with open(path, "rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
        batch: list[Metric] = []
        consumed = 0
        for line in chunk.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # a record being written right now: next time
            consumed += len(line)
            if line.strip():
                record = json.loads(line)
                step, stamp = int(record.pop("step")), int(record.pop("time") * 1000)
                batch.extend(Metric(k, float(v), stamp, step) for k, v in record.items())
            if len(batch) >= 900:
                self.client.log_batch(run_id, metrics=batch)
                batch, offset, consumed = [], offset + consumed, 0
                self.journal.data["metrics_offset"] = offset
                self.journal.save()
        if batch:
            self.client.log_batch(run_id, metrics=batch)
        if consumed:
            self.journal.data["metrics_offset"] = offset + consumed
            self.journal.save()


def _is_permanent(error: Exception) -> bool:
    """Errors that a retry cannot fix: the server rejected the request, or a local file is bad.
    Anything else (connection refused, timeouts, 5xx) is transient."""
    from mlflow.exceptions import RestException
    if isinstance(error, CheckpointError):
        return True
    return isinstance(error, RestException) and error.error_code in (
        "INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST",
        "INVALID_STATE", "PERMISSION_DENIED", "RESOURCE_LIMIT_EXCEEDED")
