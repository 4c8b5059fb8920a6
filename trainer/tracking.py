"""Run tracking: what the loop logs, behind one small interface. Only rank 0 tracks.

`LocalMetrics` always writes `<output_dir>/metrics.jsonl`, so nothing is lost whatever happens
to a tracking server. `MLflowTracker` adds an MLflow run on top, fed by ONE background thread:

- the loop's calls only append to metrics.jsonl / a bounded queue and return in microseconds;
- the thread owns a journal, `<output_dir>/mlflow_state.json` (run id, byte offset of the
  metrics already sent, operations not yet sent), rewritten atomically after every change;
- metrics are sent by tailing metrics.jsonl from that offset, so a dead server only delays them:
  the thread retries every `retry_interval_s`, and `python -m trainer tracking-sync --run-dir DIR`
  sends whatever a finished job left behind;
- a server that is down at start-up gets the run created when it comes back;
- the first failure prints ONE warning on stderr; the client's own retries are cut to seconds.
Delivery is at-least-once: a crash between a send and the journal update re-sends that batch.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol

from trainer.tracking_info import MAX_PARAM_LENGTH, MAX_TAG_LENGTH, config_params, dataset_name, run_tags  # noqa: F401

if TYPE_CHECKING:
    from trainer.config import Config
    from trainer.dist import WorldInfo

STATE_FILE = "mlflow_state.json"
METRICS_FILE = "metrics.jsonl"
# A dead or hung server costs seconds inside the thread, never MLflow's default minutes.
CLIENT_ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


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


# ---------------------------------------------------------------------------------------------
# What a run records besides metrics


def resolve_tracking_uri(config_uri: Optional[str], output_dir: str) -> str:
    """The config's uri, else MLFLOW_TRACKING_URI, else a sqlite file in the output dir (no server)."""
    uri = config_uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{os.path.abspath(os.path.join(output_dir, 'mlflow.db'))}"


# ---------------------------------------------------------------------------------------------
# The journal and the sender (used by the tracker thread and by `tracking-sync`)


class Journal:
    """Persistent tracking state of one output dir; written atomically after each change."""

    def __init__(self, output_dir: str) -> None:
        self.path = Path(output_dir) / STATE_FILE
        self.data: dict[str, Any] = {"run_id": None, "metrics_offset": 0, "pending": []}
        if self.path.exists():
            try:
                self.data.update(json.loads(self.path.read_text()))
            except ValueError:
                print(f"warning: {self.path} is unreadable: starting a new tracking journal", file=sys.stderr)

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


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
                experiment_id = self.client.create_experiment(
                    data["experiment"], artifact_location=data.get("artifact_location"))
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
            from trainer.tracking_plots import draw_metric_curves
            png = draw_metric_curves(os.path.join(self.output_dir, METRICS_FILE),
                                     os.path.join(self.output_dir, "metric_curves.png"))
            if png:
                self.client.log_artifact(run_id, png)
        elif kind == "overlay":
            from shards.schema import load_schema
            from trainer.tracking_plots import draw_eval_overlay
            with open(op["predictions_path"]) as handle:
                records = json.load(handle)
            png = draw_eval_overlay(op["val_shards"], records, load_schema(op["schema"]).skeleton,
                                    op["out_png"])
            if png:
                self.client.log_artifact(run_id, png, op["artifact_path"])
        elif kind == "register":
            from trainer.registry import register_checkpoint
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

    from trainer.backends.base import CheckpointError
    if isinstance(error, CheckpointError):
        return True
    return isinstance(error, RestException) and error.error_code in (
        "INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST",
        "INVALID_STATE", "PERMISSION_DENIED", "RESOURCE_LIMIT_EXCEEDED")


# ---------------------------------------------------------------------------------------------
# The tracker the loop uses


class MLflowTracker(LocalMetrics):
    """metrics.jsonl + an MLflow run fed by one background thread (see the module docstring)."""

    def __init__(self, output_dir: str, tracking_uri: str, experiment: str, run_name: Optional[str],
                 run_id: Optional[str] = None, system_metrics: bool = True,
                 retry_interval_s: float = 30.0, finish_timeout_s: float = 60.0,
                 start_wait_s: float = 10.0, config_dict: Optional[dict] = None,
                 registered_model: Optional[str] = None, alias: str = "champion") -> None:
        super().__init__(output_dir)
        self.output_dir = output_dir
        self.config_dict, self.registered_model, self.alias = config_dict, registered_model, alias
        for name, value in CLIENT_ENV_DEFAULTS.items():
            os.environ.setdefault(name, value)
        # urllib3 logs every retry as a warning: the thread prints its own single warning instead.
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        self.journal = Journal(output_dir)
        data = self.journal.data
        if run_id:  # the checkpoint's run wins over a stale journal
            data["run_id"] = run_id
        data["run_started"] = False  # this job (re)opens the run
        data.update(tracking_uri=tracking_uri, experiment=experiment, run_name=run_name)
        if tracking_uri.startswith("sqlite:") or "://" not in tracking_uri:
            data["artifact_location"] = Path(output_dir, "mlartifacts").resolve().as_uri()
        # A job that ended while the server was down left a `finish`: this job reopens the run.
        data["pending"] = [op for op in data["pending"] if op["kind"] != "finish"]
        self.journal.save()
        self.retry_interval_s = retry_interval_s
        self.finish_timeout_s = finish_timeout_s
        self._sender = RunSender(output_dir, self.journal, system_metrics)
        self._queue: queue.Queue = queue.Queue(maxsize=10000)
        self._first_attempt = threading.Event()
        self._warned = False
        self._failing = False
        self._thread = threading.Thread(target=self._loop, name="mlflow-tracker", daemon=True)
        self._thread.start()
        # Start-up waits for the first attempt (so the run id is known early), never long: a dead
        # server answers at once, a hung one is cut by the timeout.
        self._first_attempt.wait(start_wait_s)

    @property
    def run_id(self) -> Optional[str]:  # type: ignore[override]
        return self.journal.data.get("run_id")

    # -- the loop's calls: all return immediately ------------------------------------------------

    def _put(self, op: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(op)
        except queue.Full:  # only when the thread is stuck: metrics are safe in metrics.jsonl anyway
            if op["kind"] != "wake":
                print(f"warning: tracking queue full: dropped a {op['kind']} operation", file=sys.stderr)

    def log_params(self, params: dict[str, Any]) -> None:
        self._put({"kind": "params", "params": {k: str(v)[:MAX_PARAM_LENGTH] for k, v in params.items()}})

    def set_tags(self, tags: dict[str, str]) -> None:
        self._put({"kind": "tags", "tags": {k: str(v)[:MAX_TAG_LENGTH] for k, v in tags.items()}})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        super().log_metrics(metrics, step)
        self._put({"kind": "wake"})

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self._put({"kind": "artifact", "path": os.path.abspath(path), "artifact_path": artifact_path})

    def log_eval(self, metrics: dict[str, float], step: int, predictions_path: str | None = None,
                 overlay_png: str | None = None) -> None:
        """Eval metrics (as eval/<name>) and, when given, the predictions json (evaluate's out_path)
        and an overlay PNG, uploaded under eval/step_<step>/ (the files must stay where they are).
        With predictions but no PNG, the thread draws val samples with their predictions itself."""
        self.log_metrics({f"eval/{k}": v for k, v in metrics.items()}, step)
        artifact_path = f"eval/step_{step:08d}"
        for path in (predictions_path, overlay_png):
            if path:
                self.log_artifact(path, artifact_path)
        if predictions_path and not overlay_png and self.config_dict:
            self._put({"kind": "overlay", "predictions_path": os.path.abspath(predictions_path),
                       "val_shards": self.config_dict["data"]["val_shards"],
                       "schema": self.config_dict["data"]["schema"], "artifact_path": artifact_path,
                       "out_png": os.path.join(os.path.abspath(self.output_dir), f"eval_overlay_{step:08d}.png")})

    def register_best(self, checkpoint_path: str, metric_name: str, value: float, step: int) -> None:
        """Register a checkpoint as a model version, in the thread (trainer.registry); the alias
        moves only when `value` beats its holder. No-op without a registered model name."""
        if not self.registered_model or self.config_dict is None:
            return
        self._put({"kind": "register", "args": {
            "checkpoint_path": os.path.abspath(checkpoint_path), "config": self.config_dict,
            "name": self.registered_model, "alias": self.alias, "metric_name": metric_name,
            "value": float(value), "step": int(step)}})

    def finish(self, status: str = "FINISHED") -> None:
        """Curves, the run status, a last flush; waits at most `finish_timeout_s`."""
        self._put({"kind": "curves"})
        self._put({"kind": "finish", "status": status})
        self._thread.join(self.finish_timeout_s)
        if self._thread.is_alive() or self.journal.data["pending"]:
            print(f"warning: tracking: not everything reached {self.journal.data['tracking_uri']}; "
                  f"it is kept in {self.output_dir}: send it with "
                  f"`python -m trainer tracking-sync --run-dir {self.output_dir}`", file=sys.stderr)
        super().finish(status)

    # -- the thread ----------------------------------------------------------------------------

    def _loop(self) -> None:
        next_attempt = 0.0
        finishing = False
        while True:
            if time.monotonic() >= next_attempt or finishing:
                try:
                    self._sender.flush()
                    if finishing:
                        self._sender.terminate()
                        return
                    if self._failing:
                        print(f"note: tracking server {self.journal.data['tracking_uri']} is reachable "
                              f"again; the pending records were sent", file=sys.stderr)
                    self._failing = False
                except Exception as error:  # any client error: keep training, keep the journal
                    self._fail(error)
                    next_attempt = time.monotonic() + self.retry_interval_s
                    if finishing:
                        self._sender.stop_system_metrics()
                        return
                finally:
                    self._first_attempt.set()
            finishing = self._drain(timeout=0.0 if finishing else 0.5) or finishing

    def _drain(self, timeout: float) -> bool:
        """Move queued operations into the journal; True when `finish` was requested."""
        ops = []
        try:
            ops.append(self._queue.get(timeout=timeout) if timeout else self._queue.get_nowait())
            while True:
                ops.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        durable = [op for op in ops if op["kind"] != "wake"]
        if durable:
            self.journal.data["pending"].extend(durable)
            self.journal.save()
        return any(op["kind"] == "finish" for op in ops)

    def _fail(self, error: Exception) -> None:
        self._failing = True
        if not self._warned:
            self._warned = True
            message = str(error).splitlines()[0][:300] if str(error) else ""
            print(f"warning: MLflow tracking at {self.journal.data['tracking_uri']} failed "
                  f"({type(error).__name__}: {message}). Training goes on; metrics are kept in "
                  f"{os.path.join(self.output_dir, METRICS_FILE)} and sent when the server is back "
                  f"(retry every {self.retry_interval_s:g} s), or later with `python -m trainer "
                  f"tracking-sync --run-dir {self.output_dir}`", file=sys.stderr, flush=True)


def open_tracker(config: "Config", world: "WorldInfo", run_id: str | None) -> Tracker:
    """Rank 0 gets the real tracker; every other rank a NullTracker (one run per job, not per rank).

    `run_id` (from a resumed checkpoint) continues that run. Tracking disabled: metrics.jsonl only.
    POSEFORGE_TRACKING_RETRY_S and POSEFORGE_SYSTEM_METRICS=0 tune the thread (tests use them).
    """
    if not world.is_main:
        return NullTracker()
    if not config.tracking.enabled:
        return LocalMetrics(config.output_dir)
    from trainer.config import save_config, to_dict
    tracker = MLflowTracker(
        config.output_dir, resolve_tracking_uri(config.tracking.uri, config.output_dir),
        config.tracking.experiment, config.tracking.run_name, run_id=run_id,
        system_metrics=os.environ.get("POSEFORGE_SYSTEM_METRICS", "1") != "0",
        retry_interval_s=float(os.environ.get("POSEFORGE_TRACKING_RETRY_S", "30")),
        config_dict=to_dict(config), registered_model=config.tracking.registered_model,
        alias=config.tracking.alias)
    tracker.log_params(config_params(config))
    tracker.set_tags(run_tags(config, world))
    resolved = os.path.join(config.output_dir, "config.yaml")
    if not os.path.exists(resolved):
        save_config(config, resolved)
    tracker.log_artifact(resolved)
    return tracker


# ---------------------------------------------------------------------------------------------
# python -m trainer tracking-sync


def add_sync_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "tracking-sync", help="send a run's metrics/records that never reached the MLflow server")
    parser.add_argument("--run-dir", required=True, help="the training output_dir (holds mlflow_state.json)")
    parser.add_argument("--tracking-uri", help="send to this server instead of the one the run used")
    return parser


def run_sync(args: argparse.Namespace) -> int:
    """Exit 0 when everything was sent, 1 when the server still fails, 2 for a wrong directory."""
    state = Path(args.run_dir) / STATE_FILE
    if not state.exists():
        print(f"error: {state} does not exist: not a tracked run directory", file=sys.stderr)
        return 2
    for name, value in CLIENT_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    journal = Journal(args.run_dir)
    if args.tracking_uri:
        journal.data["tracking_uri"] = args.tracking_uri
    sender = RunSender(args.run_dir, journal, reopen=False)
    try:
        sender.flush()
        sender.terminate()
    except Exception as error:
        print(f"error: {journal.data['tracking_uri']}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(f"run {journal.data['run_id']}: up to date ({journal.data['metrics_offset']} bytes of "
          f"{METRICS_FILE} sent)")
    return 0
