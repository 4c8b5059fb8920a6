"""python -m trainer tracking-sync: send what a finished job left in its journal."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.tracking.base import METRICS_FILE
from trainer.tracking.journal import STATE_FILE, Journal, use_short_client_timeouts
from trainer.tracking.sender import RunSender


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
    use_short_client_timeouts()
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
