"""Bad records are skipped and counted by reason; detector boxes become records with a score."""
import json
import os
import shutil

from shards.__main__ import main
from shards.manifest import read_manifest
from tests.shards.shards_testlib import load_json, read_samples


def _make_bad_set(synth_coco: str, tmp_path) -> tuple[str, str, dict]:
    """A copy of the synthetic train set with one broken record of every kind."""
    data = load_json(os.path.join(synth_coco, "annotations", "person_keypoints_train.json"))
    images = str(tmp_path / "images")
    shutil.copytree(os.path.join(synth_coco, "images", "train"), images)
    people = [a for a in data["annotations"] if not a["iscrowd"] and a["num_keypoints"] > 0]
    by_image = {img["id"]: img for img in data["images"]}
    # image of person 0 goes missing, image of a person elsewhere becomes garbage
    missing_img = people[0]["image_id"]
    corrupt_img = next(a["image_id"] for a in people if a["image_id"] != missing_img)
    os.remove(os.path.join(images, by_image[missing_img]["file_name"]))
    with open(os.path.join(images, by_image[corrupt_img]["file_name"]), "wb") as f:
        f.write(b"\xff\xd8 not really a jpeg")
    expected = {
        "missing_image": sum(a["image_id"] == missing_img for a in people),
        "corrupt_image": sum(a["image_id"] == corrupt_img for a in people),
    }
    healthy = [a for a in people if a["image_id"] not in (missing_img, corrupt_img)]
    healthy[0]["bbox"] = [5000.0, 10.0, 40.0, 40.0]  # outside the 640x480 image
    healthy[1]["bbox"] = [10.0, 10.0, 0.0, 40.0]  # zero width
    expected.update(box_outside_image=1, zero_area=1,
                    crowd=sum(a["iscrowd"] for a in data["annotations"]),
                    no_keypoints=sum(1 for a in data["annotations"] if not a["iscrowd"] and a["num_keypoints"] == 0))
    ann_path = str(tmp_path / "ann.json")
    with open(ann_path, "w") as f:
        json.dump(data, f)
    return ann_path, images, expected


def test_skips_counted_per_reason(synth_coco, tmp_path):
    ann, images, expected = _make_bad_set(synth_coco, tmp_path)
    out = str(tmp_path / "out")
    assert main(["coco", "--annotations", ann, "--images", images, "--out", out, "--max-side", "64",
                 "--workers", "1", "--samples-per-shard", "4", "--no-progress"]) == 0
    manifest = read_manifest(out)
    assert manifest["skipped"] == {k: v for k, v in expected.items() if v}
    total = len(load_json(ann)["annotations"])
    assert manifest["num_samples"] == total - sum(expected.values()) == len(read_samples(out))
    assert main(["verify", out]) == 0


def test_detections_make_scored_records(synth_coco, tmp_path):
    dets = load_json(os.path.join(synth_coco, "annotations", "person_detections_val.json"))
    out = str(tmp_path / "dets")
    assert main(["coco", "--annotations", os.path.join(synth_coco, "annotations", "person_keypoints_val.json"),
                 "--images", os.path.join(synth_coco, "images", "val"), "--out", out, "--split", "val",
                 "--detections", os.path.join(synth_coco, "annotations", "person_detections_val.json"),
                 "--score-threshold", "0.3", "--max-side", "64", "--workers", "1", "--no-progress"]) == 0
    manifest = read_manifest(out)
    kept = [i for i, d in enumerate(dets) if d["score"] >= 0.3]
    assert manifest["skipped"].get("below_score_threshold") == len(dets) - len(kept)
    samples = read_samples(out)
    assert sorted(m["annotation_id"] for _, _, m in samples) == kept
    for _, _, meta in samples:
        assert meta["score"] == dets[meta["annotation_id"]]["score"]
        assert all(v == 0 for _, _, v in meta["keypoints"])
    assert len(manifest["ground_truth"]["annotations"]) > 0
