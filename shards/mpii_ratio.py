"""`python -m shards head-ratio`: how head size (0.6 x head-box diagonal) relates to the
upper-neck/head-top distance on real annotations: the --estimate-head-size constant, measured."""
from __future__ import annotations

import numpy as np

from .mpii import read_json_entries
from .mpii_heads import ESTIMATED_HEAD_SIZE_PER_NECK_TOP, check_pairing, neck_top_distance, read_head_boxes
from .schema import MPII16


def head_ratios(annotations: str, head_boxes: str) -> np.ndarray:
    """head size / |neck - top| of every person with both joints labelled."""
    entries = read_json_entries(annotations, MPII16.num_keypoints)
    heads = read_head_boxes(head_boxes, MPII16.num_keypoints)
    check_pairing(heads, [e["kps"] for e in entries], annotations)
    ratios = []
    for e, size in zip(entries, heads.head_sizes):
        distance = neck_top_distance(e["kps"])
        if distance:
            ratios.append(size / distance)
    return np.asarray(ratios)


def print_head_ratio(annotations: str, head_boxes: str) -> int:
    ratios = head_ratios(annotations, head_boxes)
    if not len(ratios):
        print(f"{annotations}: nobody has both upper neck and head top labelled")
        return 1
    print(f"{len(ratios)} people: head size / neck-top distance mean {ratios.mean():.4f}, "
          f"median {np.median(ratios):.4f} (--estimate-head-size uses {ESTIMATED_HEAD_SIZE_PER_NECK_TOP}; "
          f"the mean estimate / real head size would be {np.mean(ESTIMATED_HEAD_SIZE_PER_NECK_TOP / ratios):.3f})")
    return 0
