"""The detector-box protocol (mmpose CocoMetric defaults) against values derived independently:
by hand for a small case, and against a plain re-implementation of mmpose's documented rule."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tests.trainer.evaluation.mmpose_reference import reference_results
from trainer.config import Config
from trainer.data import transforms
from trainer.evaluation.instances import (box_source, build_coco_results, detector_protocol, input_window_areas,
                                          oks_nms, rescore_instances)

SIGMAS2 = (0.1, 0.1)  # a 2-keypoint schema: variance (2 sigma)^2 = 0.04 per keypoint


def test_small_case_by_hand():
    """Rescoring: box x mean of keypoint scores > 0.2; OKS-NMS drops OKS > 0.9 with the best kept.

    A: box 0.9, scores (0.8, 0.1) -> 0.9 x 0.8 = 0.72
    B: box 1.0, scores (0.6, 0.5) -> 1.0 x 0.55 = 0.55; 0.5 px from A on both keypoints, areas
       100: OKS = exp(-0.25 / 0.04 / 100 / 2) = exp(-0.03125) = 0.9692 > 0.9 -> dropped
    C: box 0.5, scores (0.1, 0.2) -> nothing above 0.2 (0.2 is not) -> 0; far away -> kept
    """
    keypoints = np.array([[[10.0, 10.0, 0.8], [20.0, 20.0, 0.1]],
                          [[10.5, 10.0, 0.6], [20.0, 20.5, 0.5]],
                          [[90.0, 90.0, 0.1], [95.0, 95.0, 0.2]]])
    box_scores = np.array([0.9, 1.0, 0.5])
    areas = np.array([100.0, 100.0, 100.0])
    scores = rescore_instances(box_scores, keypoints[:, :, 2])
    np.testing.assert_allclose(scores, [0.72, 0.55, 0.0])
    assert math.exp(-0.03125) == pytest.approx(0.9692, abs=1e-4)
    assert oks_nms(keypoints, scores, areas, SIGMAS2) == [0, 2]
    results = build_coco_results("detector", [7, 7, 7], keypoints, box_scores, areas, SIGMAS2)
    assert [r["score"] for r in results] == pytest.approx([0.72, 0.0])


def test_padded_box_area_decides_suppression_by_hand():
    """1 px apart on both keypoints. Detector box 10 x 10 (area 100): OKS = exp(-1 / 0.04 / 100 / 2)
    = exp(-0.125) = 0.8825 <= 0.9, both kept. The padded box 12.5 x 12.5 (area 156.25):
    OKS = exp(-1 / 0.04 / 156.25 / 2) = exp(-0.08) = 0.9231 > 0.9: the duplicate goes."""
    keypoints = np.array([[[10.0, 10.0, 0.9], [20.0, 20.0, 0.9]],
                          [[11.0, 10.0, 0.8], [20.0, 21.0, 0.8]]])
    scores = np.array([0.9, 0.8])
    assert oks_nms(keypoints, scores, np.array([100.0, 100.0]), SIGMAS2) == [0, 1]
    assert oks_nms(keypoints, scores, np.array([156.25, 156.25]), SIGMAS2) == [0]


@pytest.mark.parametrize("input_size, box, expected", [
    # 256x256 input (aspect 1): a 100 x 200 box widens to 200 x 200, x 1.25 -> 250 x 250
    ((256, 256), [30.0, 40.0, 100.0, 200.0], 250.0 * 250.0),
    # 192x256 (aspect 0.75): 100 x 200 -> w = 200 x 0.75 = 150 -> 187.5 x 250
    ((192, 256), [30.0, 40.0, 100.0, 200.0], 187.5 * 250.0),
    # a wide box on 192x256: 300 x 100 -> h = 300 / 0.75 = 400 -> 375 x 500
    ((192, 256), [0.0, 0.0, 300.0, 100.0], 375.0 * 500.0),
])
def test_oks_nms_area_is_the_padded_aspect_fixed_box(input_size, box, expected):
    """The evaluation geometry's input window, in image px, is mmpose's bbox_scale after
    GetBBoxCenterScale(padding=1.25) and TopdownAffine's aspect fix (computed by hand above)."""
    augment = Config().augment
    geometry = transforms.sample_geometry(None, np.array([box]), None, augment, input_size, None)
    input_to_image = transforms.invert_affines(transforms.crop_to_input_affine(geometry, input_size))
    assert input_window_areas(input_to_image, input_size)[0] == pytest.approx(expected, rel=1e-9)


def test_box_source_from_manifest():
    assert box_source({"boxes": "detector"}) == "detector"
    assert box_source({"boxes": "gt"}) == "gt"
    assert box_source({"sources": {"detections": {"path": "d.json"}}}) == "detector"  # older manifests
    assert box_source({"sources": {}}) == "gt"


def random_detections(seed: int, images: int = 12, people: int = 3, k: int = 17):
    """Several people per image, each seen by 1-4 boxes: near-duplicate keypoints (0.5-4 px off)
    and some low scores, as a person detector's boxes give them."""
    rng = np.random.default_rng(seed)
    image_ids, keypoints, box_scores, areas = [], [], [], []
    for image in range(images):
        for _ in range(people):
            centre, size = rng.uniform(50, 400, 2), rng.uniform(40, 200)
            base = centre + rng.normal(0, size / 4, (k, 2))
            for _ in range(int(rng.integers(1, 5))):
                kps = np.c_[base + rng.normal(0, rng.uniform(0.5, 4.0), (k, 2)), rng.uniform(0, 1, k)]
                image_ids.append(100 + image)
                keypoints.append(kps)
                box_scores.append(rng.uniform(0.05, 1.0))
                areas.append((1.25 * size) ** 2 * rng.uniform(0.8, 1.2))
    return np.array(image_ids), np.array(keypoints), np.array(box_scores), np.array(areas)


def test_matches_a_plain_reimplementation_of_mmpose_rule():
    sigmas = (.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062, .107, .107,
              .087, .087, .089, .089)
    image_ids, keypoints, box_scores, areas = random_detections(3)
    ours = build_coco_results("detector", image_ids, keypoints, box_scores, areas, sigmas)
    reference = reference_results(image_ids, keypoints, box_scores, areas, sigmas)
    assert len(reference) < len(image_ids)  # duplicates were suppressed
    assert len(ours) == len(reference)
    for mine, ref in zip(sorted(ours, key=lambda r: (r["image_id"], -r["score"])), reference):
        assert mine["image_id"] == ref["image_id"]
        assert mine["score"] == pytest.approx(ref["score"], rel=1e-12)
        np.testing.assert_allclose(mine["keypoints"], ref["keypoints"])
    scores, kept = detector_protocol(image_ids, keypoints, box_scores, areas, sigmas)
    assert sorted(float(scores[i]) for i in kept) == pytest.approx(sorted(r["score"] for r in reference), rel=1e-12)
