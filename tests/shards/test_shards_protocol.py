"""What the manifest tells evaluation: box source (COCO) and the MPII person-box convention."""
import hashlib
import json
import os

import numpy as np
import pytest

from shards.__main__ import main
from shards.crop import apply_affine
from shards.manifest import read_manifest
from shards.mpii import person_box
from shards_testlib import coco_args, load_json, read_samples


def test_gt_boxes_are_recorded(coco_shards):
    manifest = read_manifest(coco_shards)
    assert manifest["boxes"] == "gt" and "detector" not in manifest


def test_detector_boxes_record_file_checksum_and_threshold(synth_coco, tmp_path):
    dets = os.path.join(synth_coco, "annotations", "person_detections_val.json")
    out = str(tmp_path / "det")
    assert main(coco_args(synth_coco, out, "--workers", "1", "--detections", dets,
                          "--score-threshold", "0.3", split="val")) == 0
    manifest = read_manifest(out)
    boxes = load_json(dets)
    kept = sum(1 for d in boxes if d["score"] >= 0.3)
    assert manifest["boxes"] == "detector"
    detector = manifest["detector"]
    assert detector["sha256"] == hashlib.sha256(open(dets, "rb").read()).hexdigest()
    assert detector["score_threshold"] == 0.3 and detector["boxes_in_file"] == len(boxes)
    assert detector["boxes_used"] == kept and manifest["skipped"]["below_score_threshold"] == len(boxes) - kept
    assert all(meta["score"] >= 0.3 for _, _, meta in read_samples(out))


def test_person_box_convention_by_hand():
    # centre (100, 200), scale 2: side 400 px, centre moved down 15 * 2 = 30 px
    assert person_box([100.0, 200.0], 2.0) == [-100.0, 30.0, 400.0, 400.0]
    assert person_box([100.0, 200.0], 2.0, shift=False) == [-100.0, 0.0, 400.0, 400.0]


def test_mpii_records_follow_the_crop_convention(synth_mpii, tmp_path):
    """Training and evaluation records alike: centre (1-based) - 1, moved down 15 x scale px."""
    for split, name in (("train", "train.json"), ("val", "val.json")):
        out = str(tmp_path / split)
        extra = ["--head-boxes", os.path.join(synth_mpii, "annotations", "gt_valid.mat")] if split == "val" else []
        assert main(["mpii", "--annotations", os.path.join(synth_mpii, "annotations", name),
                     "--images", os.path.join(synth_mpii, "images"), "--out", out, "--split", split,
                     "--max-side", "64", "--workers", "1", "--no-progress", *extra]) == 0
        entries = load_json(os.path.join(synth_mpii, "annotations", name))
        manifest = read_manifest(out)
        assert manifest["person_box"]["center_shift_y_per_scale"] == 15.0
        assert manifest["person_box"]["padding"] == 1.25
        names = manifest["ground_truth"]["images"]
        by_person = {}
        for entry in entries:
            by_person.setdefault(entry["image"], []).append(entry)
        for _, _, meta in read_samples(out):
            entry = by_person[names[meta["image_id"]]][meta["annotation_id"]]
            (cx, cy), s = entry["center"], entry["scale"]
            x, y, w, h = meta["bbox"]
            corners = apply_affine(meta["crop_to_image"], [[x, y], [x + w, y + h]])
            centre = corners.mean(axis=0)
            np.testing.assert_allclose(centre, [cx - 1.0, cy - 1.0 + 15.0 * s], atol=1e-6)
            np.testing.assert_allclose(corners[1] - corners[0], [200.0 * s, 200.0 * s], rtol=1e-9)
