"""Round trip: crop_to_image applied to stored keypoints gives the annotation back (0.01 px)."""
import os

import cv2
import numpy as np
import pytest
from scipy.io import loadmat

from shards.__main__ import main
from shards.crop import apply_affine
from shards.manifest import read_manifest
from tests.shards.shards_testlib import load_json, read_samples

TOL = 0.01


def _check_sample(meta: dict, expected: np.ndarray, jpg: bytes) -> None:
    kps = np.asarray(meta["keypoints"], float)
    img = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
    assert (img.shape[1], img.shape[0]) == tuple(meta["crop_size"])
    assert max(img.shape[:2]) <= 96
    assert (kps[:, 2] == expected[:, 2]).all()
    labelled = kps[:, 2] > 0
    back = apply_affine(meta["crop_to_image"], kps[labelled, :2])
    assert np.abs(back - expected[labelled, :2]).max() < TOL
    # stored keypoints lie inside the crop
    assert (kps[labelled, :2] >= -0.5).all() and (kps[labelled, :2] <= np.array(img.shape[1::-1]) - 0.5).all()


def test_coco_round_trip_and_counts(synth_coco, coco_shards):
    data = load_json(os.path.join(synth_coco, "annotations", "person_keypoints_train.json"))
    anns = {a["id"]: a for a in data["annotations"]}
    samples = read_samples(coco_shards)
    manifest = read_manifest(coco_shards)
    assert len(samples) == manifest["num_samples"] > 10
    assert manifest["num_samples"] == len(anns) - sum(manifest["skipped"].values())
    crowd = sum(a["iscrowd"] for a in anns.values())
    empty = sum(1 for a in anns.values() if not a["iscrowd"] and a["num_keypoints"] == 0)
    assert manifest["skipped"].get("crowd", 0) == crowd
    assert manifest["skipped"].get("no_keypoints", 0) == empty
    keys = [k for k, _, _ in samples]
    assert keys == sorted(keys, key=lambda k: tuple(int(p) for p in k.split("-")[1:]))
    for key, jpg, meta in samples:
        assert "." not in key and key == f"coco-{meta['image_id']}-{meta['annotation_id']}"
        ann = anns[meta["annotation_id"]]
        assert meta["image_id"] == ann["image_id"] and meta["image_size"] == [640, 480]
        _check_sample(meta, np.asarray(ann["keypoints"], float).reshape(-1, 3), jpg)
        bbox = apply_affine(meta["crop_to_image"], [meta["bbox"][:2]])[0]
        assert np.allclose(bbox, ann["bbox"][:2], atol=TOL)
    gt = manifest["ground_truth"]
    assert len(gt["images"]) == len(data["images"]) and len(gt["annotations"]) == len(anns)
    assert all("segmentation" not in a for a in gt["annotations"])


def _mpii_expected_json(root: str) -> dict[tuple[str, int], np.ndarray]:
    out, seen = {}, {}
    for entry in load_json(os.path.join(root, "annotations", "train.json")):
        person = seen.get(entry["image"], 0)
        seen[entry["image"]] = person + 1
        kps = [[x - 1, y - 1, 2 if v else 1] if x >= 0 else [0, 0, 0]
               for (x, y), v in zip(entry["joints"], entry["joints_vis"])]
        out[(entry["image"], person)] = np.asarray(kps, float)
    return out


@pytest.mark.parametrize("fmt", ["json", "mat"])
def test_mpii_round_trip(synth_mpii, tmp_path, fmt):
    ann = os.path.join(synth_mpii, "annotations",
                       "train.json" if fmt == "json" else "mpii_human_pose_v1_u12_1.mat")
    out = str(tmp_path / "shards")
    assert main(["mpii", "--annotations", ann, "--images", os.path.join(synth_mpii, "images"),
                 "--out", out, "--max-side", "96", "--workers", "1", "--no-progress",
                 "--samples-per-shard", "4"]) == 0
    expected = _mpii_expected_json(synth_mpii)
    samples = read_samples(out)
    manifest = read_manifest(out)
    if fmt == "json":
        assert len(samples) == len(expected)
    else:  # the release file holds every image, the validation ones too
        release = loadmat(ann, struct_as_record=False, squeeze_me=True)["RELEASE"]
        people = sum(np.atleast_1d(e.annorect).size for e in np.atleast_1d(release.annolist))
        assert len(samples) == people - sum(manifest["skipped"].values())
    names = manifest["ground_truth"]["images"]
    matched = 0
    for key, jpg, meta in samples:
        # the json convention has no head boxes and a train split needs none; the release has them
        assert ("head_size" in meta) == (fmt == "mat")
        assert (key in manifest["ground_truth"]["people"]) == (fmt == "mat")
        want = expected.get((names[meta["image_id"]], meta["annotation_id"]))
        if want is None:
            continue  # a validation person, only in the .mat
        _check_sample(meta, want, jpg)
        matched += 1
    assert matched == len(expected)
    want = {"release_head_box": len(samples)} if fmt == "mat" else {}
    assert manifest["sources"]["head_size_source"] == want
    assert manifest["head_sizes"]["estimated"] is False


def test_manifest_ground_truth_evaluates_with_pycocotools(coco_shards, capsys):
    """Keypoints mapped back through crop_to_image score AP 1.0 against the manifest alone."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from shards.manifest import load_ground_truth

    gt = COCO()
    gt.dataset = load_ground_truth(coco_shards)
    gt.createIndex()
    results = []
    for _, _, meta in read_samples(coco_shards):
        kps = np.asarray(meta["keypoints"], float)
        xy = apply_affine(meta["crop_to_image"], kps[:, :2])
        results.append({"image_id": meta["image_id"], "category_id": 1, "score": 1.0,
                        "keypoints": np.c_[xy, np.ones(len(xy))].ravel().tolist()})
    ev = COCOeval(gt, gt.loadRes(results), "keypoints")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)
