"""The MLflow tracker: metrics.jsonl + an MLflow run fed by one background thread. Rank 0 only.

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

import logging
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from trainer.tracking.base import METRICS_FILE, LocalMetrics
from trainer.tracking.info import MAX_PARAM_LENGTH, MAX_TAG_LENGTH
from trainer.tracking.journal import Journal, use_short_client_timeouts
from trainer.tracking.sender import RunSender


class MLflowTracker(LocalMetrics):
    """metrics.jsonl + an MLflow run fed by one background thread (see the module docstring)."""

    def __init__(self, output_dir: str, tracking_uri: str, experiment: str, run_name: Optional[str],
                 run_id: Optional[str] = None, system_metrics: bool = True,
                 retry_interval_s: float = 30.0, finish_timeout_s: float = 30.0,
                 start_wait_s: float = 0.0, config_dict: Optional[dict] = None,
                 registered_model: Optional[str] = None, alias: str = "champion") -> None:
        super().__init__(output_dir)
        self.output_dir = output_dir
        self.config_dict, self.registered_model, self.alias = config_dict, registered_model, alias
        use_short_client_timeouts()
        # Import the client here, before step 1: in the thread, importing MLflow holds the GIL for
        # seconds in pieces and lands between training steps (a 1 s step gap against a hung server).
        import mlflow.entities  # noqa: F401
        import mlflow.tracking  # noqa: F401
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
        # The loop does not wait for the run to exist (start_wait_s=0): a hung server would hold it
        # for the client's whole timeout. train.py reads `run_id` again at every checkpoint.
        if start_wait_s > 0:
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
        """Register a checkpoint as a model version, in the thread (trainer.tracking.registry); the alias
        moves only when `value` beats its holder. No-op without a registered model name."""
        if not self.registered_model or self.config_dict is None:
            return
        self._put({"kind": "register", "args": {
            "checkpoint_path": os.path.abspath(checkpoint_path), "config": self.config_dict,
            "name": self.registered_model, "alias": self.alias, "metric_name": metric_name,
            "value": float(value), "step": int(step)}})

    def finish(self, status: str = "FINISHED") -> None:
        """Curves, the run status, a last flush; waits at most `finish_timeout_s` (tracking.
        finish_timeout_s). A thread still stuck in a request then is left behind (a daemon): what it
        has not sent, queued operations included, stays in the journal for tracking-sync."""
        self._put({"kind": "curves"})
        self._put({"kind": "finish", "status": status})
        self._thread.join(self.finish_timeout_s)
        if self._thread.is_alive():
            self._drain(timeout=0.0)  # the queue dies with the process; the journal does not
        if self._thread.is_alive() or self.journal.data["pending"]:
            where = f"not everything reached {self.journal.data['tracking_uri']} within {self.finish_timeout_s:g} s"
            if self._warned:  # the thread's warning already named tracking-sync: say it once
                print(f"note: tracking: {where}; the rest is kept in {self.output_dir}", file=sys.stderr)
            else:
                print(f"warning: tracking: {where}; it is kept in {self.output_dir}: send it with "
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
