"""Distributed evaluation: each rank predicts its part of the val shards (flip test, decoding,
mapping back to image pixels); rank 0 gathers every sample and scores COCO AP or MPII PCKh.

Scoring refuses an incomplete val set (a dropped or doubled sample silently changes AP) unless
`eval.allow_incomplete` is set. The protocol comes from the manifest: COCO ground-truth vs
detector boxes (`boxes`, instances.py), MPII head sizes from head boxes vs estimated
(`head_sizes`); see docs/evaluation.md.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np
import torch

from shards.mpii_heads import ESTIMATE_WARNING
from shards.schema import KeypointSchema
from trainer import dist
from trainer.model.codec import Forward, HeatmapCodec, predict_heatmaps, to_image_pixels
from trainer.config import Config
from trainer.data import build_eval_loader, eval_manifest, normalize_images
from trainer.evaluation.coco_metric import coco_keypoint_eval
from trainer.errors import MetricInputError
from trainer.evaluation.instances import (KEYPOINT_SCORE_THR, OKS_NMS_THR, box_source, build_coco_results,
                                          input_window_areas, label_metrics)
from trainer.evaluation.pckh import ESTIMATED_MARK, pckh_table

class IncompleteEvaluation(RuntimeError):
    """Some val samples were not predicted (or predicted twice)."""


def predict_samples(forward: Forward, config: Config, world: dist.WorldInfo, device: torch.device,
                    codec: HeatmapCodec, schema: KeypointSchema, shards: str, flip: bool,
                    dtype: torch.dtype = torch.float32) -> list[dict[str, Any]]:
    """This rank's predictions, one record per sample, keypoints [K,3] (x, y, score) in image px."""
    permutation = schema.flip_permutation() if flip else None
    records: list[dict[str, Any]] = []
    batches = iter(build_eval_loader(config, world.rank, world.world_size, shards))
    dummy: torch.Tensor | None = None
    with torch.no_grad():
        while True:
            batch = next(batches, None)
            # Sharded models (ZeRO-3) gather weights collectively in forward: every rank must run
            # the same number of forwards, so a rank that ran out runs a dummy batch.
            if not dist.any_rank_true(batch is not None):
                break
            if batch is None:
                predict_heatmaps(forward, dummy, permutation, config.eval.flip_shift)
                continue
            images = normalize_images(batch["image"], device, dtype, config.model.channels_last)
            dummy = images[:1] if dummy is None else dummy
            heatmaps = predict_heatmaps(forward, images, permutation, config.eval.flip_shift)
            coords, scores = codec.decode(heatmaps, refine=config.codec.refine)
            input_to_image = batch["input_to_image"].numpy()
            image_coords = to_image_pixels(coords.cpu().double().numpy(), input_to_image)
            box_areas = input_window_areas(input_to_image, config.model.input_size)
            scores = scores.cpu().numpy()
            for i, key in enumerate(batch["key"]):
                records.append({
                    "key": key, "image_id": int(batch["image_id"][i]),
                    "annotation_id": int(batch["annotation_id"][i]),
                    "keypoints": np.concatenate([image_coords[i], scores[i][:, None]], axis=1).tolist(),
                    "box_score": float(batch["score"][i]), "area": float(batch["area"][i]),
                    "box_area": float(box_areas[i]),  # padded, aspect-fixed box: the OKS-NMS area
                })
    return records


def gather_predictions(records: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """All ranks' records on rank 0 (None elsewhere)."""
    parts = dist.all_gather_objects(records)
    return [r for part in parts for r in part] if parts is not None else None


def score(records: list[dict[str, Any]], manifest: dict[str, Any], schema: KeypointSchema,
          allow_incomplete: bool) -> dict[str, float]:
    """Metrics for a whole val set; the set's records must cover the manifest exactly once."""
    keys = [r["key"] for r in records]
    expected = manifest["num_samples"]
    duplicates = len(keys) - len(set(keys))
    if (len(set(keys)) != expected or duplicates) and not allow_incomplete:
        raise IncompleteEvaluation(
            f"evaluation saw {len(set(keys))} distinct samples ({duplicates} duplicates) of the "
            f"{expected} in the val manifest: metrics would be wrong. Fix the shards (python -m "
            f"shards verify) or set eval.allow_incomplete=true to report them anyway")
    records = list({r["key"]: r for r in records}.values())
    if manifest["dataset"] == "mpii":
        return score_mpii(records, manifest["ground_truth"], head_sizes_estimated(manifest))
    return score_coco(records, manifest, schema)


def head_sizes_estimated(manifest: dict[str, Any]) -> bool:
    """Whether an MPII set's head sizes were estimated (--estimate-head-size), not head boxes; a
    manifest from before `head_sizes` was recorded says so in its sources' counts."""
    if "head_sizes" in manifest:
        return bool(manifest["head_sizes"]["estimated"])
    return manifest.get("sources", {}).get("head_size_source", {}).get("estimated", 0) > 0


def protocol_warnings(manifest: dict[str, Any], config: Config | None = None) -> list[str]:
    """What makes this evaluation differ from the published protocol, one line each."""
    if manifest["dataset"] != "mpii":
        return []
    warnings = [ESTIMATE_WARNING] if head_sizes_estimated(manifest) else []
    padding = (manifest.get("person_box") or {}).get("padding")
    if config is not None and padding is not None and abs(config.augment.box_padding - padding) > 1e-9:
        warnings.append(f"augment.box_padding is {config.augment.box_padding}; the MPII crop convention "
                        f"(Newell / HRNet) is a person box of {padding} x 200 x scale px")
    return warnings


def print_warnings(manifest: dict[str, Any], config: Config | None = None) -> None:
    for line in protocol_warnings(manifest, config):
        print(f"warning: {line}", file=sys.stderr, flush=True)


def coco_results(records: list[dict[str, Any]], manifest: dict[str, Any],
                 schema: KeypointSchema) -> list[dict[str, Any]]:
    """Per-sample records -> COCO keypoint results (rescored, OKS-NMS with detector boxes): the
    list that is scored, and the format `python -m trainer eval --predictions` reads."""
    return build_coco_results(
        box_source(manifest), [r["image_id"] for r in records],
        np.array([r["keypoints"] for r in records], dtype=np.float64).reshape(len(records), -1, 3),
        box_scores=np.array([r["box_score"] for r in records]),
        areas=np.array([r["box_area"] for r in records]), sigmas=schema.sigmas)


def score_coco(records: list[dict[str, Any]], manifest: dict[str, Any], schema: KeypointSchema) -> dict[str, float]:
    metrics = coco_keypoint_eval(coco_results(records, manifest, schema), manifest["ground_truth"],
                                 sigmas=schema.sigmas)
    # The unlabelled names (AP, AR, ...) are the ones a config's eval.metric refers to.
    return {**metrics, **label_metrics(metrics, box_source(manifest))}


RECORD_FIELDS = {"key": str, "image_id": int, "keypoints": list, "box_score": (int, float),
                 "box_area": (int, float)}


def check_records(data: list[Any], path: str) -> list[dict[str, Any]]:
    """`data` as per-sample records (what `eval --out` writes); MetricInputError naming the entry."""
    for index, entry in enumerate(data):
        for field, kind in RECORD_FIELDS.items():
            if not isinstance(entry, dict) or not isinstance(entry.get(field), kind):
                raise MetricInputError(f"{path}: entry {index}: field '{field}' missing or of the wrong type "
                                       f"(per-sample records as `python -m trainer eval --out` writes them)")
    return data


def describe_protocol(manifest: dict[str, Any]) -> str:
    """The label a printed table carries: which boxes or head sizes, and from which file."""
    if manifest["dataset"] == "mpii":
        heads = "ESTIMATED head sizes" if head_sizes_estimated(manifest) else "head sizes from head boxes"
        return f"MPII PCKh, {heads}"
    if box_source(manifest) == "gt":
        return "gt_boxes: ground-truth person boxes"
    detector = manifest.get("detector") or {}
    return (f"det_boxes: detector boxes ({os.path.basename(detector.get('path', '?'))}, sha256 "
            f"{detector.get('sha256', '?')[:12]}, score >= {detector.get('score_threshold', 0.0)}), "
            f"score = box x mean keypoint score > {KEYPOINT_SCORE_THR}, OKS-NMS {OKS_NMS_THR}")


def coco_results_path(predictions_path: str) -> str:
    """Where write_predictions puts the COCO results next to `predictions_path`."""
    root, _ = os.path.splitext(predictions_path)
    return root + ".coco_results.json"


def write_predictions(records: list[dict[str, Any]], manifest: dict[str, Any], schema: KeypointSchema,
                      path: str) -> None:
    """The per-sample records to `path`; for COCO also the COCO results file (coco_results_path)."""
    with open(path, "w") as handle:
        json.dump(records, handle)
    if manifest["dataset"] != "mpii":
        records = list({r["key"]: r for r in records}.values())  # as scored
        with open(coco_results_path(path), "w") as handle:
            json.dump(coco_results(records, manifest, schema), handle)


def score_mpii(records: list[dict[str, Any]], ground_truth: dict[str, Any],
               estimated: bool = False) -> dict[str, float]:
    people = ground_truth["people"]
    records = [r for r in records if r["key"] in people]
    pred = np.array([[k[:2] for k in r["keypoints"]] for r in records], dtype=np.float64)
    gt = np.array([people[r["key"]]["joints"] for r in records], dtype=np.float64)
    visible = np.array([[v > 0 for v in people[r["key"]]["visibility"]] for r in records])
    head = np.array([people[r["key"]]["head_size"] for r in records], dtype=np.float64)
    table = pckh_table(pred, gt, visible, head, estimated)
    # the unlabelled name is what eval.metric refers to; the table's names carry the protocol
    return {**table, "PCKh": table[f"pckh0.5{ESTIMATED_MARK if estimated else ''}/mean"]}


def evaluate(backend: Any, config: Config, world: dist.WorldInfo, device: torch.device,
             codec: HeatmapCodec, schema: KeypointSchema, shards: str,
             dtype: torch.dtype = torch.float32, out_path: str | None = None) -> dict[str, float]:
    """Evaluate the backend's model on `shards`; the metrics on every rank (broadcast from rank 0)."""
    backend.model.eval()
    use_rank0_buffers(backend.unwrapped)

    def forward(images: torch.Tensor) -> torch.Tensor:
        with backend.autocast():
            return backend.model(backend.cast_inputs(images))

    records = predict_samples(forward, config, world, device, codec, schema, shards,
                              flip=config.eval.flip_test, dtype=dtype)
    everything = gather_predictions(records)
    metrics: dict[str, float] | None = None
    error: str | None = None
    if world.is_main:
        manifest = eval_manifest(shards)
        print_warnings(manifest, config)
        try:
            metrics = score(everything, manifest, schema, config.eval.allow_incomplete)
        except IncompleteEvaluation as incomplete:
            error = str(incomplete)
        if out_path and everything is not None:
            write_predictions(everything, manifest, schema, out_path)
    metrics, error = dist.broadcast_object((metrics, error))
    if error:
        raise IncompleteEvaluation(error)
    return metrics


def use_rank0_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics). DeepSpeed, unlike DDP,
    never syncs buffers, so each rank's follow its own batches; rank 0's are the ones a
    checkpoint keeps, so evaluating with them makes the metrics those of the saved model."""
    if dist.get_world_size() > 1:
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer, src=0)
