"""Fault injection for the end-to-end tests, in one place: the loop and the checkpoint writer call
these at named points, and each does nothing unless its environment variable is set.

  POSEFORGE_TEST_NAN_AT_STEP=N            the loss of step N (1-based) becomes NaN on every rank
  POSEFORGE_TEST_CRASH_IN_SAVE_AT_STEP=N  the process dies inside the save of step N, after the
                                          backend's files and before config.yaml and the COMPLETE
                                          marker, like a power cut (exit status CRASH_EXIT_CODE)

tests/e2e/test_faults.py sets them on real torchrun processes; no production path sets them.
"""
from __future__ import annotations

import os

import torch

NAN_AT_STEP_ENV = "POSEFORGE_TEST_NAN_AT_STEP"
CRASH_IN_SAVE_ENV = "POSEFORGE_TEST_CRASH_IN_SAVE_AT_STEP"
CRASH_EXIT_CODE = 86


def _step_from_env(name: str) -> int:
    return int(os.environ.get(name) or 0)


def poison_loss(loss: torch.Tensor, step: int) -> torch.Tensor:
    """The loss of `step` (1-based), made NaN when POSEFORGE_TEST_NAN_AT_STEP names that step."""
    return loss * float("nan") if step == _step_from_env(NAN_AT_STEP_ENV) else loss


def crash_in_save(step: int) -> None:
    """Die at once (no cleanup, no flush) when POSEFORGE_TEST_CRASH_IN_SAVE_AT_STEP names `step`."""
    if step == _step_from_env(CRASH_IN_SAVE_ENV):
        os._exit(CRASH_EXIT_CODE)
