"""Run tracking and the model registry. Only rank 0 tracks.

  base.py        Tracker protocol; NullTracker (other ranks); LocalMetrics (metrics.jsonl)
  journal.py     mlflow_state.json: the run id, what was sent, what is pending
  sender.py      journal + metrics.jsonl -> the MLflow run (thread and tracking-sync)
  mlflow_run.py  MLflowTracker: the loop's calls return at once, one thread talks to the server
  info.py        params (the flattened config) and tags of a run
  plots.py       metric curves and eval overlays logged as artifacts
  registry.py    best checkpoint -> registered pyfunc model version + alias
  model_package.py  the self-contained pyfunc directory: code, pinned requirements, signature
  sync.py        python -m trainer tracking-sync
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from trainer.tracking.base import LocalMetrics, NullTracker, Tracker
from trainer.tracking.info import config_params, run_tags
from trainer.tracking.journal import resolve_tracking_uri

if TYPE_CHECKING:
    from trainer.config import Config
    from trainer.dist import WorldInfo

__all__ = ["Tracker", "open_tracker"]


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
    from trainer.tracking.mlflow_run import MLflowTracker
    tracker = MLflowTracker(
        config.output_dir, resolve_tracking_uri(config.tracking.uri, config.output_dir),
        config.tracking.experiment, config.tracking.run_name, run_id=run_id,
        system_metrics=os.environ.get("POSEFORGE_SYSTEM_METRICS", "1") != "0",
        retry_interval_s=float(os.environ.get("POSEFORGE_TRACKING_RETRY_S", "30")),
        finish_timeout_s=config.tracking.finish_timeout_s,
        config_dict=to_dict(config), registered_model=config.tracking.registered_model,
        alias=config.tracking.alias)
    tracker.log_params(config_params(config))
    tracker.set_tags(run_tags(config, world))
    resolved = os.path.join(config.output_dir, "config.yaml")
    if not os.path.exists(resolved):
        save_config(config, resolved)
    tracker.log_artifact(resolved)
    return tracker
