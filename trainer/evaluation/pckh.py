"""MPII PCKh on plain arrays, as in the MPII validation script that HRNet (lib/dataset/mpii.py
evaluate) and mmpose (MpiiDataset / PCKh with headbox_file) run: see :func:`mpii_pckh` for the
exact conventions and docs/evaluation.md for their sources. Head sizes must come from real head
boxes for the numbers to be comparable; estimated ones are marked in every metric name."""
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
# HRNet prints pckAll[11] of np.arange(0, 0.5 + 0.01, 0.01) as "Mean@0.1": threshold 0.11
HRNET_MEAN_AT_01_THRESHOLD = float(np.arange(0, 0.5 + 0.01, 0.01)[11])
ESTIMATED_MARK = "-esthead"  # in every metric name computed with estimated head sizes


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
               head_size: np.ndarray, estimated: bool = False) -> dict[str, float]:
    """The standard MPII report: ``pckh0.5/<joint|group|mean>`` (PCKh@0.5, mean without pelvis
    and thorax), ``pckh0.1/mean`` (the same mean at threshold 0.1) and ``pckh0.11/mean`` (threshold
    0.11: the column HRNet's evaluate prints as "Mean@0.1"). With ``estimated`` head sizes every
    name carries ``-esthead`` (``pckh0.5-esthead/mean``): such numbers are not comparable with
    published ones. Keys avoid '@', which MLflow rejects in metric names.
    """
    mark = ESTIMATED_MARK if estimated else ""
    table = {f"pckh0.5{mark}/{name}": value
             for name, value in mpii_pckh(pred, gt, visible, head_size, 0.5).items()}
    table[f"pckh0.1{mark}/mean"] = mpii_pckh(pred, gt, visible, head_size, 0.1)["mean"]
    table[f"pckh0.11{mark}/mean"] = mpii_pckh(pred, gt, visible, head_size, HRNET_MEAN_AT_01_THRESHOLD)["mean"]
    return table


def format_pckh_table(table: Mapping[str, float]) -> str:
    """The layout of published MPII tables, from a :func:`pckh_table` dict, with a line that says
    what the two tight-threshold columns are and where the head sizes came from."""
    mark = ESTIMATED_MARK if any(ESTIMATED_MARK in key for key in table) else ""
    columns = [(group.capitalize(), f"pckh0.5{mark}/{group}") for group in MPII_PCKH_GROUPS]
    columns += [("Mean", f"pckh0.5{mark}/mean"), ("Mean@0.1", f"pckh0.1{mark}/mean"),
                ("Mean@0.11", f"pckh0.11{mark}/mean")]
    header = " ".join(f"{label:>9}" for label, _ in columns)
    row = " ".join(f"{table[key]:>9.2f}" for _, key in columns)
    heads = "ESTIMATED head sizes (not comparable)" if mark else "head sizes from head boxes"
    note = (f"PCKh@0.5 (Mean: without pelvis, thorax); Mean@0.1: threshold 0.1; Mean@0.11: what HRNet "
            f"prints as Mean@0.1; {heads}")
    return f"{header}\n{row}\n{note}"


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
