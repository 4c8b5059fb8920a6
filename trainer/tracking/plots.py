"""Pictures for the tracking run: eval overlays (val samples with their predictions) and metric
curves. The drawing primitives are in trainer/visualize.py; the curves use matplotlib's Agg
backend, imported only when the curves are drawn (at the end of a run).
"""
from __future__ import annotations

import json
import math
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from trainer.visualize import draw_pose, tile


def draw_eval_overlay(val_shards: str, records: list[dict[str, Any]], skeleton: Sequence[Sequence[int]],
                      out_png: str, count: int = 8) -> Optional[str]:
    """The first `count` val samples (stored crops) with their predicted skeletons, one PNG.

    `records` are evaluate's per-sample predictions ("key", "keypoints" [K,3] in image px); each
    crop's stored crop -> image affine maps them back onto the crop. None when nothing matched."""
    from trainer.data.reader import ErrorCounter, shard_samples
    from trainer.data.sources import resolve_shards
    from trainer.data.transforms import apply_affine, invert_affine
    by_key = {r["key"]: np.asarray(r["keypoints"], np.float64) for r in records}
    drawn: list[np.ndarray] = []
    for url in resolve_shards(val_shards, "data.val_shards").urls:
        for raw in shard_samples(url, ErrorCounter()):
            if raw.key not in by_key or "json" not in raw.members or "jpg" not in raw.members:
                continue
            image = cv2.imdecode(np.frombuffer(raw.members["jpg"], np.uint8), cv2.IMREAD_COLOR)
            meta = json.loads(raw.members["json"])
            if image is None:
                continue
            keypoints = by_key[raw.key].copy()
            to_crop = invert_affine(np.asarray(meta["crop_to_image"], np.float64).reshape(2, 3))
            keypoints[:, :2] = apply_affine(to_crop, keypoints[:, :2])
            drawn.append(draw_pose(image, keypoints, skeleton))
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
