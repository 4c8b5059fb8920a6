"""COCO keypoint AP / OKS-NMS / rescoring / MPII PCKh on small hand-built inputs."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from trainer.evaluation.coco_metric import COCO_METRIC_NAMES, coco_keypoint_eval, format_coco_table, load_coco_results, subset_ground_truth
from trainer.evaluation.instances import BOX_SOURCES, build_coco_results, label_metrics, oks_nms, rescore_instances
from trainer.evaluation.pckh import MPII_JOINT_NAMES, format_pckh_table, mpii_pckh, pckh_table
from trainer.errors import MetricInputError

# COCO-17 OKS sigmas (nose ... right ankle), the published values.
COCO_SIGMAS = (.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062, .107, .107,
               .087, .087, .089, .089)


def _person(ann_id, image_id, box, labelled, rng, num_keypoints=17, iscrowd=0):
    """A COCO person annotation with keypoints inside ``box`` for the ``labelled`` indices."""
    x, y, w, h = box
    keypoints = np.zeros((num_keypoints, 3))
    for k in labelled:
        keypoints[k] = (x + rng.uniform(0.1, 0.9) * w, y + rng.uniform(0.1, 0.9) * h, 2)
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": iscrowd,
            "bbox": [x, y, w, h], "area": 0.75 * w * h, "num_keypoints": len(labelled),
            "keypoints": keypoints.reshape(-1).round(2).tolist()}


@pytest.fixture
def coco_gt():
    """4 images: large and medium people, a crowd region, a person with 3 labelled keypoints,
    a person with no labelled keypoints (ignored by COCOeval)."""
    rng = np.random.default_rng(0)
    everything = range(17)
    annotations = [
        _person(1, 1, (50, 40, 100, 200), everything, rng),             # large
        _person(2, 1, (300, 60, 40, 80), range(5, 17), rng),            # medium
        _person(3, 1, (400, 200, 80, 60), [], rng, iscrowd=1),          # crowd region
        _person(4, 2, (10, 10, 40, 60), [0, 5, 6], rng),                # few keypoints
        _person(5, 2, (200, 100, 40, 50), [], rng),                     # no keypoints
        _person(6, 3, (20, 30, 150, 300), everything, rng),             # large
        _person(7, 4, (120, 80, 110, 220), range(0, 17, 2), rng),       # large, 9 labelled
    ]
    return {"images": [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"}
                       for i in (1, 2, 3, 4)],
            "annotations": annotations,
            "categories": [{"id": 1, "name": "person", "supercategory": "person"}]}


def _perfect_results(gt, rng=None):
    """One result per evaluable person, labelled keypoints exact, unlabelled ones anywhere in
    the box (they must not matter)."""
    rng = rng or np.random.default_rng(1)
    results = []
    for ann in gt["annotations"]:
        if ann["iscrowd"] or ann["num_keypoints"] == 0:
            continue
        keypoints = np.array(ann["keypoints"], dtype=float).reshape(-1, 3)
        x, y, w, h = ann["bbox"]
        unlabelled = keypoints[:, 2] == 0
        keypoints[unlabelled, 0] = x + rng.uniform(0, w, unlabelled.sum())
        keypoints[unlabelled, 1] = y + rng.uniform(0, h, unlabelled.sum())
        keypoints[:, 2] = 0.9
        results.append({"image_id": ann["image_id"], "category_id": 1,
                        "keypoints": keypoints.reshape(-1).tolist(), "score": 1.0})
    return results


# --------------------------------------------------------------------------- COCO AP

def test_predictions_equal_to_ground_truth_give_ap_one(coco_gt, capsys):
    results = _perfect_results(coco_gt)
    # A lower-scored detection inside the crowd region is ignored, not a false positive.
    results.append({"image_id": 1, "category_id": 1, "score": 0.5,
                    "keypoints": [v for _ in range(17) for v in (440.0, 230.0, 0.5)]})
    gt_before, results_before = copy.deepcopy(coco_gt), copy.deepcopy(results)

    metrics = coco_keypoint_eval(results, coco_gt, COCO_SIGMAS)

    assert set(metrics) == set(COCO_METRIC_NAMES)
    for name in COCO_METRIC_NAMES:
        assert metrics[name] == pytest.approx(1.0), name
    assert capsys.readouterr().out == ""  # pycocotools' prints are swallowed
    assert coco_gt == gt_before and results == results_before  # inputs untouched


def test_default_sigmas_are_coco_and_verbose_prints(coco_gt, capsys):
    metrics = coco_keypoint_eval(_perfect_results(coco_gt), coco_gt, verbose=True)
    assert metrics["AP"] == pytest.approx(1.0)
    assert "Average Precision" in capsys.readouterr().out


def test_perturbed_prediction_lowers_ap(coco_gt):
    results = _perfect_results(coco_gt)
    for result in results[:2]:  # the two people of image 1, shifted by 12 px
        keypoints = np.array(result["keypoints"]).reshape(-1, 3)
        keypoints[:, 0] += 12.0
        result["keypoints"] = keypoints.reshape(-1).tolist()
    metrics = coco_keypoint_eval(results, coco_gt, COCO_SIGMAS)
    assert 0.0 < metrics["AP"] < 0.9
    assert metrics["AP50"] >= metrics["AP75"] >= 0.0
    assert metrics["APm"] < 1.0 and metrics["APl"] < 1.0


def test_images_without_predictions_count_as_misses_unless_subset(coco_gt):
    only_image_1 = [r for r in _perfect_results(coco_gt) if r["image_id"] == 1]
    assert coco_keypoint_eval(only_image_1, coco_gt, COCO_SIGMAS)["AR"] < 1.0
    subset = subset_ground_truth(coco_gt, [1])
    assert [im["id"] for im in subset["images"]] == [1]
    assert coco_keypoint_eval(only_image_1, subset, COCO_SIGMAS)["AR"] == pytest.approx(1.0)
    with pytest.raises(MetricInputError, match="99"):
        subset_ground_truth(coco_gt, [1, 99])


def test_empty_results_give_zeros(coco_gt):
    assert coco_keypoint_eval([], coco_gt, COCO_SIGMAS) == {n: 0.0 for n in COCO_METRIC_NAMES}


def test_results_for_unknown_image_or_category_are_rejected(coco_gt):
    results = _perfect_results(coco_gt)
    results[1]["image_id"] = 77
    with pytest.raises(MetricInputError, match=r"result 1: image_id 77 is not in the ground"):
        coco_keypoint_eval(results, coco_gt, COCO_SIGMAS)
    results = _perfect_results(coco_gt)
    results[0]["category_id"] = 2
    with pytest.raises(MetricInputError, match="category_id 2"):
        coco_keypoint_eval(results, coco_gt, COCO_SIGMAS)


def test_custom_schema_with_custom_sigmas():
    rng = np.random.default_rng(3)
    gt = {"images": [{"id": 10}, {"id": 11}],
          "annotations": [_person(1, 10, (0, 0, 120, 150), range(5), rng, num_keypoints=5),
                          _person(2, 11, (30, 20, 50, 60), range(4), rng, num_keypoints=5)],
          "categories": [{"id": 1, "name": "person"}]}
    sigmas = [0.05] * 5
    assert coco_keypoint_eval(_perfect_results(gt), gt, sigmas)["AP"] == pytest.approx(1.0)
    with pytest.raises(MetricInputError, match="expected 51"):  # the COCO-17 default
        coco_keypoint_eval(_perfect_results(gt), gt)
    with pytest.raises(MetricInputError, match="positive"):
        coco_keypoint_eval(_perfect_results(gt), gt, [0.05, 0.05, 0.0, 0.05, 0.05])


def test_malformed_ground_truth_names_the_annotation(coco_gt):
    results = _perfect_results(coco_gt)
    del coco_gt["annotations"][3]["num_keypoints"]
    with pytest.raises(MetricInputError, match=r"annotation 4: missing field\(s\) \['num_k"):
        coco_keypoint_eval(results, coco_gt, COCO_SIGMAS)


def test_format_coco_table_and_labels():
    metrics = {name: i / 10 for i, name in enumerate(COCO_METRIC_NAMES)}
    table = format_coco_table(metrics, title="det_boxes").splitlines()
    assert table[0] == "det_boxes" and len(table) == 11
    assert "IoU=0.50:0.95 | area=   all | maxDets= 20 ] = 0.000" in table[1]
    assert "(AR) @[ IoU=0.75      | area=   all" in table[8] and table[8].endswith("0.700")
    assert "area=medium" in table[4] and table[4].endswith("0.300")
    assert BOX_SOURCES == ("gt", "detector")
    assert label_metrics({"AP": 0.5}, "gt") == {"gt_boxes/AP": 0.5}
    assert label_metrics({"AP": 0.5}, "detector") == {"det_boxes/AP": 0.5}
    with pytest.raises(MetricInputError, match="box source"):
        label_metrics({"AP": 0.5}, "boxes")


# --------------------------------------------------------------------------- rescoring, NMS

def test_rescore_instances_math():
    scores = rescore_instances([0.5, 1.0, 0.8], [[0.1, 0.3, 0.5], [0.1, 0.2, 0.1],
                                                  [0.9, 0.9, 0.6]], threshold=0.2)
    # (0.3 + 0.5) / 2 * 0.5; none strictly above 0.2 -> 0; (0.9 + 0.9 + 0.6) / 3 * 0.8
    np.testing.assert_allclose(scores, [0.2, 0.0, 0.64])
    with pytest.raises(MetricInputError):
        rescore_instances([0.5], [[0.1, 0.3], [0.2, 0.2]])


def _instance(offset_x, num_keypoints=17):
    rng = np.random.default_rng(5)
    keypoints = np.ones((num_keypoints, 3))
    keypoints[:, :2] = rng.uniform(0, 100, (num_keypoints, 2))
    keypoints[:, 0] += offset_x
    return keypoints


def test_oks_nms_removes_near_duplicate_keeps_distinct_people():
    keypoints = np.stack([_instance(0), _instance(300), _instance(0.5), _instance(600)])
    scores = np.array([0.7, 0.6, 0.9, 0.1])  # the near-duplicate of person 0 scores higher
    areas = np.full(4, 100.0 * 100.0)
    assert oks_nms(keypoints, scores, areas, COCO_SIGMAS, 0.9) == [2, 1, 3]
    assert oks_nms(keypoints[:0], scores[:0], areas[:0], COCO_SIGMAS) == []


def test_oks_nms_threshold_matches_hand_computed_oks():
    # One keypoint, sigma 0.1, area 100, offset 1 px: OKS = exp(-1 / 0.2**2 / 100 / 2) = 0.8825
    keypoints = np.array([[[10.0, 10.0, 1.0]], [[11.0, 10.0, 1.0]]])
    scores, areas = np.array([0.9, 0.8]), np.array([100.0, 100.0])
    assert math.exp(-0.125) == pytest.approx(0.8825, abs=1e-4)
    assert oks_nms(keypoints, scores, areas, [0.1], threshold=0.88) == [0]
    assert oks_nms(keypoints, scores, areas, [0.1], threshold=0.89) == [0, 1]
    identical = np.repeat(keypoints[:1], 2, axis=0)  # OKS exactly 1 is not above 1.0
    assert oks_nms(identical, scores, areas, [0.1], threshold=1.0) == [0, 1]


def test_build_coco_results_per_protocol():
    keypoints = np.stack([_instance(0), _instance(0.5), _instance(300), _instance(0)])
    keypoints[:, :, 2] = 0.8
    keypoints[1, :, 2] = 0.4
    image_ids = np.array([1, 1, 1, 2])  # instance 3 duplicates instance 0 on another image
    box_scores = np.array([0.9, 0.5, 0.6, 1.0])
    areas = np.full(4, 1e4)

    detector = build_coco_results("detector", image_ids, keypoints, box_scores, areas,
                                  COCO_SIGMAS)
    assert [(r["image_id"], r["score"]) for r in detector] == [
        (1, pytest.approx(0.72)), (1, pytest.approx(0.48)), (2, pytest.approx(0.8))]
    assert detector[0]["keypoints"] == keypoints[0].reshape(-1).tolist()
    json.dumps(detector)  # plain Python types, writable as a results file

    ground_truth_boxes = build_coco_results("gt", image_ids, keypoints)
    assert [r["score"] for r in ground_truth_boxes] == pytest.approx([0.8, 0.4, 0.8, 0.8])
    with pytest.raises(MetricInputError, match="box_scores, areas and sigmas"):
        build_coco_results("detector", image_ids, keypoints)


def test_detector_protocol_end_to_end_with_duplicates(coco_gt):
    perfect = _perfect_results(coco_gt)
    keypoints = np.array([r["keypoints"] for r in perfect]).reshape(len(perfect), 17, 3)
    duplicates = keypoints.copy()
    duplicates[:, :, :2] += 1.0
    image_ids = [r["image_id"] for r in perfect] * 2
    box_scores = np.r_[np.ones(len(perfect)), np.full(len(perfect), 0.5)]
    areas = np.full(2 * len(perfect), 5000.0)
    results = build_coco_results("detector", image_ids, np.concatenate([keypoints, duplicates]),
                                 box_scores, areas, COCO_SIGMAS)
    assert len(results) == len(perfect)
    metrics = label_metrics(coco_keypoint_eval(results, coco_gt, COCO_SIGMAS), "detector")
    assert metrics["det_boxes/AP"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- results file

def test_load_coco_results_round_trip(tmp_path, coco_gt):
    path = tmp_path / "preds.json"
    results = _perfect_results(coco_gt)
    path.write_text(json.dumps(results))
    assert load_coco_results(path) == results


@pytest.mark.parametrize("content, problem", [
    (None, "cannot read"),
    ("{not json", "not valid JSON"),
    ('{"image_id": 1}', "expected a JSON list"),
    ('[{"image_id": 1, "category_id": 1, "score": 1}]', r"entry 0: missing field\(s\) \['keyp"),
    ('[{"image_id": 1, "category_id": 1, "score": 1, "keypoints": [1, 2]}]', "flat list"),
    ('[{"image_id": 1, "category_id": 1, "score": "x", "keypoints": [1, 2, 3]}]', "'score'"),
    ('[5]', "entry 0: expected an object"),
])
def test_load_coco_results_bad_files(tmp_path, content, problem):
    path = tmp_path / "preds.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(MetricInputError, match=problem) as error:
        load_coco_results(path)
    assert str(path) in str(error.value)


# --------------------------------------------------------------------------- MPII PCKh

def _mpii_people(n=3, seed=0):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 200, (n, 16, 2)).astype(float)  # exact distances at the boundary
    return gt, np.ones((n, 16), dtype=bool), np.full(n, 10.0)


def test_pckh_perfect_predictions_give_100():
    gt, visible, head_size = _mpii_people()
    table = pckh_table(gt.copy(), gt, visible, head_size)
    assert all(value == 100.0 for value in table.values())
    assert set(table) >= {"pckh0.5/head", "pckh0.5/ankle", "pckh0.5/mean", "pckh0.1/mean",
                          "pckh0.5/l_wrist"}
    assert "Mean@0.1" in format_pckh_table(table)


def test_pckh_threshold_boundary_excluded_and_unlabelled_joints():
    gt, visible, head_size = _mpii_people(n=2)
    pred = gt.copy()
    pred[0, 0] += (3.0, 4.0)    # r_ankle 5 px away = exactly 0.5 x head size: correct at 0.5
    pred[1, 0] += (3.0, 4.01)   # just beyond the boundary: wrong
    pred[:, 6] += 50.0          # pelvis wrong for everyone: excluded from the mean
    pred[:, 7] += 50.0          # thorax too
    pred[1, 9] += 40.0          # head top of person 1 wrong but not annotated: not counted
    visible[1, 9] = False

    at_half = mpii_pckh(pred, gt, visible, head_size)
    assert at_half["r_ankle"] == 50.0
    assert at_half["pelvis"] == 0.0 and at_half["thorax"] == 0.0
    assert at_half["head_top"] == 100.0 and at_half["head"] == 100.0
    assert at_half["ankle"] == 75.0  # plain average of r_ankle 50 and l_ankle 100
    # pooled over the 2 x 14 - 1 = 27 annotated joints outside pelvis/thorax, one wrong
    assert at_half["mean"] == pytest.approx(100.0 * 26 / 27)
    assert mpii_pckh(pred, gt, visible, head_size, excluded=())["mean"] == \
        pytest.approx(100.0 * 26 / 31)

    table = pckh_table(pred, gt, visible, head_size)
    assert table["pckh0.5/mean"] == pytest.approx(100.0 * 26 / 27)
    assert table["pckh0.1/mean"] == pytest.approx(100.0 * 25 / 27)  # the 5 px joint fails @0.1


def test_pckh_mean_is_weighted_by_joint_counts():
    gt, visible, head_size = _mpii_people(n=2)
    pred = gt.copy()
    visible[1] = False
    visible[1, 0] = True        # person 1: only r_ankle annotated, and predicted wrong
    pred[1, 0] += 30.0
    result = mpii_pckh(pred, gt, visible, head_size)
    assert result["r_ankle"] == 50.0
    # pooled: 14 correct of 15 annotated; an unweighted mean of joints would give 96.43
    assert result["mean"] == pytest.approx(100.0 * 14 / 15)


def test_pckh_unannotated_joint_is_nan_and_nan_prediction_is_wrong():
    gt, visible, head_size = _mpii_people(n=2)
    pred = gt.copy()
    visible[:, 15] = False
    pred[0, 12] = np.nan
    result = mpii_pckh(pred, gt, visible, head_size)
    assert math.isnan(result["l_wrist"]) and result["wrist"] == 100.0
    assert result["r_shoulder"] == 50.0
    assert list(result)[:16] == list(MPII_JOINT_NAMES)


def test_pckh_rejects_bad_inputs():
    gt, visible, head_size = _mpii_people(n=2)
    with pytest.raises(MetricInputError, match="head size"):
        mpii_pckh(gt, gt, visible, np.array([10.0, 0.0]))
    with pytest.raises(MetricInputError, match=r"\[N, 16, 2\]"):
        mpii_pckh(gt[:, :14], gt[:, :14], visible[:, :14], head_size)
    with pytest.raises(MetricInputError, match="no annotated joints"):
        mpii_pckh(gt, gt, np.zeros_like(visible), head_size)
    # an unannotated person may have no head box
    visible[1] = False
    assert mpii_pckh(gt, gt, visible, np.array([10.0, 0.0]))["mean"] == 100.0
