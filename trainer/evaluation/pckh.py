"""MPII PCKh on plain arrays, as in the validation script used by the Stacked Hourglass ports
(see :func:`mpii_pckh` for the exact conventions)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from trainer.errors import MetricInputError

# MPII joint order (0 r-ankle ... 15 l-wrist) and the groups of the standard PCKh table.
MPII_JOINT_NAMES = ("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis",
                    "thorax", "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder",
                    "l_shoulder", "l_elbow", "l_wrist")
MPII_PCKH_GROUPS: dict[str, tuple[int, ...]] = {
    "head": (9,), "shoulder": (12, 13), "elbow": (11, 14), "wrist": (10, 15),
    "hip": (2, 3), "knee": (1, 4), "ankle": (0, 5),
}
MPII_EXCLUDED_JOINTS = (6, 7)  # pelvis and thorax: left out of the reported mean


def mpii_pckh(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, head_size: np.ndarray,
              threshold: float = 0.5,
              excluded: Sequence[int] = MPII_EXCLUDED_JOINTS) -> dict[str, float]:
    """PCKh in percent: per joint (MPII names), per group, and 'mean'.

    ``pred``, ``gt`` [N, 16, 2] pixels; ``visible`` [N, 16]: the joint is annotated (MPII's
    "not missing", not its is_visible flag); ``head_size`` [N] pixels (0.6 x head box
    diagonal). A joint is correct when its distance to the ground truth is <= threshold x head
    size (the boundary counts as correct, as in the reference scripts); NaN predictions are
    wrong. Conventions of the validation script used by the Stacked Hourglass ports:
    'mean' pools every annotated joint outside ``excluded`` (a joint-count-weighted average of
    the per-joint values, their ``jnt_ratio``), 'head' is the head top alone, and a left/right
    group is the plain average of its two joints. A joint never annotated is NaN.
    """
    correct, counts = _pck_counts(pred, gt, visible, head_size, threshold)
    per_joint = np.full(counts.shape, np.nan)
    np.divide(100.0 * correct, counts, out=per_joint, where=counts > 0)
    table = {name: float(value) for name, value in zip(MPII_JOINT_NAMES, per_joint)}
    for group, members in MPII_PCKH_GROUPS.items():
        values = per_joint[list(members)]
        table[group] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
    included = np.ones(counts.size, dtype=bool)
    included[list(excluded)] = False
    pooled = float(counts[included].sum())
    table["mean"] = 100.0 * float(correct[included].sum()) / pooled if pooled else math.nan
    return table


def pckh_table(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray,
               head_size: np.ndarray) -> dict[str, float]:
    """The standard MPII report: ``pckh0.5/<joint|group|mean>`` and ``pckh0.1/mean``.

    ``pckh0.1/mean`` is the table's "Mean@0.1". Keys avoid '@', which MLflow rejects in
    metric names.
    """
    table = {f"pckh0.5/{name}": value
             for name, value in mpii_pckh(pred, gt, visible, head_size, 0.5).items()}
    table["pckh0.1/mean"] = mpii_pckh(pred, gt, visible, head_size, 0.1)["mean"]
    return table


def format_pckh_table(table: Mapping[str, float]) -> str:
    """Two lines in the layout of published MPII tables, from a :func:`pckh_table` dict."""
    columns = [(group.capitalize(), f"pckh0.5/{group}") for group in MPII_PCKH_GROUPS]
    columns += [("Mean", "pckh0.5/mean"), ("Mean@0.1", "pckh0.1/mean")]
    header = " ".join(f"{label:>9}" for label, _ in columns)
    row = " ".join(f"{table[key]:>9.2f}" for _, key in columns)
    return f"{header}\n{row}"


def _pck_counts(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, head_size: np.ndarray,
                threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-joint (correct, annotated) counts over all people."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    visible = np.asarray(visible).astype(bool)
    head_size = np.asarray(head_size, dtype=np.float64)
    num_joints = len(MPII_JOINT_NAMES)
    if gt.ndim != 3 or gt.shape[1:] != (num_joints, 2) or pred.shape != gt.shape:
        raise MetricInputError(f"PCKh needs pred and gt [N, {num_joints}, 2], got {pred.shape} "
                               f"and {gt.shape}")
    if visible.shape != gt.shape[:2] or head_size.shape != gt.shape[:1]:
        raise MetricInputError(f"PCKh needs visible [N, {num_joints}] and head_size [N], got "
                               f"{visible.shape} and {head_size.shape}")
    annotated_people = visible.any(axis=1)
    bad = annotated_people & ~(np.isfinite(head_size) & (head_size > 0))
    if bad.any():
        raise MetricInputError(f"PCKh: head size must be positive for annotated people; "
                               f"people {np.flatnonzero(bad)[:10].tolist()} are not")
    if not visible.any():
        raise MetricInputError("PCKh: no annotated joints to evaluate")
    distance = np.linalg.norm(pred - gt, axis=-1)  # NaN predictions compare False below
    safe_size = np.where(annotated_people, head_size, 1.0)[:, None]
    correct = (distance <= threshold * safe_size) & visible
    return correct.sum(axis=0), visible.sum(axis=0)
