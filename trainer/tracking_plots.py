"""Pictures for the tracking run and the predict CLI: skeleton overlays and metric curves.

Drawing uses cv2 only (fast, no global state); the curves use matplotlib's Agg backend, which
the MLflow install brings, imported only when the curves are drawn (at the end of a run).
"""
from __future__ import annotations

import json
import math
from typing import Any, Optional, Sequence

import cv2
import numpy as np

SCORE_THRESHOLD = 0.2  # joints below this heatmap score are not drawn


def draw_skeleton(image: np.ndarray, keypoints: np.ndarray, skeleton: Sequence[Sequence[int]],
                  box: Optional[Sequence[float]] = None, threshold: float = SCORE_THRESHOLD) -> np.ndarray:
    """Draw one person (keypoints [K,3] x, y, score in this image's px) on a BGR image, in place."""
    scale = max(1, round(max(image.shape[:2]) / 400))
    keypoints = np.asarray(keypoints, np.float64)
    shown = keypoints[:, 2] >= threshold
    if box is not None:
        x, y, w, h = (int(round(v)) for v in box)
        cv2.rectangle(image, (x, y), (x + w, y + h), (255, 200, 0), scale)
    for a, b in skeleton:
        if shown[a] and shown[b]:
            cv2.line(image, tuple(int(round(v)) for v in keypoints[a, :2]),
                     tuple(int(round(v)) for v in keypoints[b, :2]), (0, 220, 255), 2 * scale, cv2.LINE_AA)
    for point in keypoints[shown]:
        cv2.circle(image, (int(round(point[0])), int(round(point[1]))), 2 * scale, (0, 0, 255), -1, cv2.LINE_AA)
    return image


def tile(images: Sequence[np.ndarray], cell: int = 256, columns: int = 4) -> np.ndarray:
    """Square thumbnails of BGR images on a grid."""
    rows = max(1, math.ceil(len(images) / columns))
    canvas = np.zeros((rows * cell, min(columns, max(1, len(images))) * cell, 3), np.uint8)
    for index, image in enumerate(images):
        factor = cell / max(image.shape[:2])
        small = cv2.resize(image, (max(1, int(image.shape[1] * factor)), max(1, int(image.shape[0] * factor))),
                           interpolation=cv2.INTER_AREA)
        row, column = divmod(index, columns)
        canvas[row * cell:row * cell + small.shape[0], column * cell:column * cell + small.shape[1]] = small
    return canvas


def draw_eval_overlay(val_shards: str, records: list[dict[str, Any]], skeleton: Sequence[Sequence[int]],
                      out_png: str, count: int = 8) -> Optional[str]:
    """The first `count` val samples (stored crops) with their predicted skeletons, one PNG.

    `records` are evaluate's per-sample predictions ("key", "keypoints" [K,3] in image px); each
    crop's stored crop -> image affine maps them back onto the crop. None when nothing matched."""
    from trainer.data.reader import ErrorCounter, _grouped
    from trainer.data.sources import resolve_shards
    from trainer.transforms import apply_affine, invert_affine
    by_key = {r["key"]: np.asarray(r["keypoints"], np.float64) for r in records}
    drawn: list[np.ndarray] = []
    for url in resolve_shards(val_shards, "data.val_shards").urls:
        for raw in _grouped(url, ErrorCounter()):
            if raw.key not in by_key or "json" not in raw.members or "jpg" not in raw.members:
                continue
            image = cv2.imdecode(np.frombuffer(raw.members["jpg"], np.uint8), cv2.IMREAD_COLOR)
            meta = json.loads(raw.members["json"])
            if image is None:
                continue
            keypoints = by_key[raw.key].copy()
            to_crop = invert_affine(np.asarray(meta["crop_to_image"], np.float64).reshape(2, 3))
            keypoints[:, :2] = apply_affine(to_crop, keypoints[:, :2])
            drawn.append(draw_skeleton(image, keypoints, skeleton))
            if len(drawn) >= count:
                break
        if len(drawn) >= count:
            break
    if not drawn:
        return None
    cv2.imwrite(out_png, tile(drawn))
    return out_png


def draw_metric_curves(metrics_jsonl: str, out_png: str) -> Optional[str]:
    """Loss (per stack too), learning rate and eval metrics against the step, from metrics.jsonl."""
    try:
        with open(metrics_jsonl) as handle:
            records = [json.loads(line) for line in handle if line.strip()]
    except (OSError, ValueError):
        return None
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        for key, value in record.items():
            if key not in ("step", "time") and isinstance(value, (int, float)) and math.isfinite(value):
                steps, values = series.setdefault(key, ([], []))
                steps.append(int(record["step"]))
                values.append(float(value))
    panels = [("loss", [k for k in series if k.startswith("train/loss")]),
              ("learning rate", [k for k in series if k == "train/lr"]),
              ("eval", [k for k in series if k.startswith("eval/") and "/" not in k[5:]])]
    panels = [(title, keys) for title, keys in panels if keys]
    if not panels:
        return None
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # a bare Figure: no pyplot global state in a thread
    figure = Figure(figsize=(5 * len(panels), 3.6), dpi=100)
    for index, (title, keys) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        for key in sorted(keys)[:12]:
            axes.plot(*series[key], label=key, marker="o" if len(series[key][0]) < 20 else None)
        axes.set_title(title)
        axes.set_xlabel("step")
        axes.legend(fontsize=7)
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out_png)
    return out_png
