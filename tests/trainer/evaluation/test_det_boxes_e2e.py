"""Synthetic COCO + a detections file with near-duplicate and low-score boxes -> shards with
--detections -> `trainer eval` of a checkpoint and of a predictions file. Rescored scores, the kept
set after OKS-NMS and AP are checked against values derived here, independently of poseforge: the
padded box area by hand, the protocol by tests/trainer/evaluation/mmpose_reference.py, AP by
pycocotools on those results."""
from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from shards.__main__ import main as shards_main
from shards.manifest import read_manifest
from shards.schema import COCO17
from tests.shards.shards_testlib import read_samples
from tests.testlib import make_checkpoint
from tests.trainer.evaluation.mmpose_reference import reference_results
from trainer.__main__ import main as trainer_main

THRESHOLD = 0.1  # detector score threshold at sharding


@pytest.fixture(scope="module")
def det_set(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("det")
    raw = root / "raw"
    assert shards_main(["synth", "--format", "coco", "--out", str(raw), "--images", "1", "--val-images", "8",
                        "--seed", "11", "--workers", "1"]) == 0
    dets_path = raw / "annotations" / "person_detections_val.json"
    out = root / "val_det"
    assert shards_main(["coco", "--annotations", str(raw / "annotations" / "person_keypoints_val.json"),
                        "--images", str(raw / "images" / "val"), "--out", str(out), "--split", "val",
                        "--detections", str(dets_path), "--score-threshold", str(THRESHOLD),
                        "--max-side", "96", "--workers", "1", "--no-progress"]) == 0
    return {"root": root, "dets": json.loads(dets_path.read_text()), "shards": str(out),
            "gt": json.loads((raw / "annotations" / "person_keypoints_val.json").read_text())}


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_the_detections_hold_duplicates_and_low_scores(det_set):
    dets = det_set["dets"]
    duplicates = sum(1 for i, a in enumerate(dets) for b in dets[i + 1:]
                     if a["image_id"] == b["image_id"] and _iou(a["bbox"], b["bbox"]) > 0.7)
    manifest = read_manifest(det_set["shards"])
    assert duplicates >= 3
    assert manifest["skipped"]["below_score_threshold"] > 0
    assert any(d["score"] < 0.5 for d in dets if d["score"] >= THRESHOLD)  # low but kept
    assert manifest["boxes"] == "detector"


def padded_area(bbox: list[float], input_w: int, input_h: int) -> float:
    """By hand: widen the box to the input's aspect ratio, then pad by 1.25 (mmpose's
    GetBBoxCenterScale + TopdownAffine, HRNet's _box2cs)."""
    w, h = bbox[2], bbox[3]
    aspect = input_w / input_h
    if w > h * aspect:
        h = w / aspect
    else:
        w = h * aspect
    return 1.25 * w * 1.25 * h


def pycocotools_ap(results: list[dict], ground_truth: dict) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = json.loads(json.dumps(ground_truth))
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes([{**r, "category_id": 1} for r in results]), "keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


def printed_ap(text: str) -> float:
    return float(re.search(r"\(AP\) @\[ IoU=0\.50:0\.95 \| area=   all \| maxDets= 20 \] = ([0-9.]+)", text).group(1))


def run_trainer(capsys, *args: str) -> str:
    capsys.readouterr()
    assert trainer_main(list(args)) == 0
    return capsys.readouterr().out


def reference_from_records(records: list[dict], dets: list[dict], input_size: tuple[int, int]) -> list[dict]:
    keypoints = np.array([r["keypoints"] for r in records])
    areas = [padded_area(dets[r["annotation_id"]]["bbox"], *input_size) for r in records]
    box_scores = [dets[r["annotation_id"]]["score"] for r in records]
    return reference_results([r["image_id"] for r in records], keypoints, box_scores, areas, COCO17.sigmas)


def test_checkpoint_evaluation_uses_the_detector_protocol(det_set, tmp_path, capsys):
    checkpoint, config = make_checkpoint(tmp_path / "run")
    input_size = tuple(config.model.input_size)
    preds = tmp_path / "preds.json"
    out = run_trainer(capsys, "eval", "--checkpoint", checkpoint, "--shards", det_set["shards"], "--out", str(preds),
                      "data.workers=1")
    assert "det_boxes" in out and "OKS-NMS 0.9" in out
    records = json.loads(preds.read_text())
    dets = det_set["dets"]
    for r in records:
        assert r["box_score"] == pytest.approx(dets[r["annotation_id"]]["score"])
        assert r["box_area"] == pytest.approx(padded_area(dets[r["annotation_id"]]["bbox"], *input_size), rel=1e-6)
    reference = reference_from_records(records, dets, input_size)
    written = json.loads(Path(str(preds).replace(".json", ".coco_results.json")).read_text())
    # the kept set and its scores (box scores travel as float32 in batches: 1e-7 relative)
    order = lambda r: (r["image_id"], -r["score"])  # noqa: E731
    written, reference = sorted(written, key=order), sorted(reference, key=order)
    assert [(r["image_id"], round(r["score"], 5)) for r in written] == \
        [(r["image_id"], round(r["score"], 5)) for r in reference]
    np.testing.assert_allclose([r["keypoints"] for r in written], [r["keypoints"] for r in reference], atol=1e-9)
    assert len(written) < len(records)  # OKS-NMS removed duplicates
    ap = pycocotools_ap(reference, det_set["gt"])
    assert printed_ap(out) == pytest.approx(ap, abs=5e-4)
    again = run_trainer(capsys, "eval", "--predictions", str(preds), "--shards", det_set["shards"])
    assert "det_boxes" in again and printed_ap(again) == pytest.approx(ap, abs=5e-4)


def test_predictions_file_is_rescored_and_suppressed_like_mmpose(det_set, tmp_path, capsys):
    """Records whose keypoints are the matched person's ground truth plus noise, with random
    keypoint scores: AP is high, and equals pycocotools on the reference protocol's results."""
    rng = np.random.default_rng(5)
    dets, gt = det_set["dets"], det_set["gt"]
    input_size = (256, 256)
    records = []
    for key, _, meta in read_samples(det_set["shards"]):
        box = dets[meta["annotation_id"]]["bbox"]
        people = [a for a in gt["annotations"] if a["image_id"] == meta["image_id"] and a["num_keypoints"] > 0]
        best = max(people, key=lambda a: _iou(a["bbox"], box), default=None)
        kps = np.zeros((17, 3))
        kps[:, :2] = rng.uniform(box[:2], np.add(box[:2], box[2:]), (17, 2))
        if best is not None and _iou(best["bbox"], box) > 0.3:
            truth = np.asarray(best["keypoints"], float).reshape(17, 3)
            labelled = truth[:, 2] > 0
            kps[labelled, :2] = truth[labelled, :2] + rng.normal(0, 2.0, (labelled.sum(), 2))
        kps[:, 2] = rng.uniform(0, 1, 17)
        records.append({"key": key, "image_id": meta["image_id"], "annotation_id": meta["annotation_id"],
                        "keypoints": kps.tolist(), "box_score": meta["score"],
                        "box_area": padded_area(box, *input_size)})
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records))
    out = run_trainer(capsys, "eval", "--predictions", str(path), "--shards", det_set["shards"])
    reference = reference_from_records(records, dets, input_size)
    ap = pycocotools_ap(reference, det_set["gt"])
    assert ap > 0.5 and len(reference) < len(records)
    assert "det_boxes" in out and printed_ap(out) == pytest.approx(ap, abs=5e-4)
