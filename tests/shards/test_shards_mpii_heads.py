"""MPII head sizes: from a gt_valid.mat-layout file, from the release, estimated only when asked."""
import hashlib
import math
import os

import numpy as np
import pytest
from scipy.io import loadmat

from shards.__main__ import main
from shards.manifest import read_manifest
from shards_testlib import load_json, read_samples


def _mpii_args(root: str, out: str, annotations: str, split: str, *extra: str) -> list[str]:
    return ["mpii", "--annotations", os.path.join(root, "annotations", annotations),
            "--images", os.path.join(root, "images"), "--out", out, "--split", split,
            "--max-side", "64", "--workers", "1", "--no-progress", *extra]


def _gt_valid(root: str) -> dict:
    """The synthetic gt_valid.mat read the way the MPII evaluation script reads it."""
    return loadmat(os.path.join(root, "annotations", "gt_valid.mat"))


def test_synth_writes_the_gt_valid_layout(synth_mpii):
    gt = _gt_valid(synth_mpii)
    n = len(load_json(os.path.join(synth_mpii, "annotations", "val.json")))
    assert gt["headboxes_src"].shape == (2, 2, n)
    assert gt["pos_gt_src"].shape == (16, 2, n) and gt["jnt_missing"].shape == (16, n)
    assert [str(x[0]) for x in gt["dataset_joints"][0]][:3] == ["rank", "rkne", "rhip"]
    entries = load_json(os.path.join(synth_mpii, "annotations", "val.json"))
    assert all("head_box" not in e for e in entries)  # like the real valid.json


def test_val_json_takes_head_sizes_from_the_head_box_file(synth_mpii, tmp_path):
    out = str(tmp_path / "val")
    head_file = os.path.join(synth_mpii, "annotations", "gt_valid.mat")
    assert main(_mpii_args(synth_mpii, out, "val.json", "val", "--head-boxes", head_file)) == 0
    gt = _gt_valid(synth_mpii)
    boxes = gt["headboxes_src"]
    # the evaluation script: headsizes = 0.6 * ||headboxes_src[1] - headboxes_src[0]|| per column
    expected = 0.6 * np.sqrt(((boxes[1] - boxes[0]) ** 2).sum(axis=0))
    manifest = read_manifest(out)
    people = manifest["ground_truth"]["people"]
    entries = load_json(os.path.join(synth_mpii, "annotations", "val.json"))
    assert len(people) == len(entries) == manifest["num_samples"]
    for i, (key, person) in enumerate(sorted(people.items(), key=lambda kv: _order(kv[0]))):
        assert person["head_size"] == pytest.approx(expected[i], rel=1e-9)
        # evaluation truth = pos_gt_src - 1 (0-based), annotated = 1 - jnt_missing
        annotated = gt["jnt_missing"][:, i] == 0
        assert person["visibility"] == annotated.astype(int).tolist()
        np.testing.assert_allclose(np.asarray(person["joints"])[annotated],
                                   gt["pos_gt_src"][:, :, i][annotated] - 1.0)
    info = manifest["head_sizes"]
    assert info["estimated"] is False and info["sources"] == {"head_boxes_file": len(entries)}
    assert info["file"]["sha256"] == hashlib.sha256(open(head_file, "rb").read()).hexdigest()
    for _, _, meta in read_samples(out):
        assert meta["head_size"] == people[f"mpii-{meta['image_id']}-{meta['annotation_id']}"]["head_size"]


def _order(key: str) -> tuple[int, int]:
    _, image_id, person = key.split("-")
    return int(image_id), int(person)


def test_val_json_without_head_boxes_exits_2_naming_both_ways_out(synth_mpii, tmp_path, capsys):
    assert main(_mpii_args(synth_mpii, str(tmp_path / "v"), "val.json", "val")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "val.json" in err and "head boxes" in err
    assert "--head-boxes" in err and "--estimate-head-size" in err
    assert not os.path.exists(tmp_path / "v" / "manifest.json")


def test_train_json_needs_no_head_sizes(synth_mpii, tmp_path):
    out = str(tmp_path / "t")
    assert main(_mpii_args(synth_mpii, out, "train.json", "train")) == 0
    manifest = read_manifest(out)
    assert manifest["num_samples"] == len(load_json(os.path.join(synth_mpii, "annotations", "train.json")))
    assert manifest["skipped"].get("no_head_size", 0) == 0


def test_estimated_head_sizes_are_opt_in_marked_and_warned(synth_mpii, tmp_path, capsys):
    out = str(tmp_path / "e")
    assert main(_mpii_args(synth_mpii, out, "val.json", "val", "--estimate-head-size")) == 0
    assert "ESTIMATED" in capsys.readouterr().err
    manifest = read_manifest(out)
    assert manifest["head_sizes"]["estimated"] is True
    assert manifest["head_sizes"]["estimate_per_neck_top"] == 0.75
    for _, _, meta in read_samples(out):
        neck, top = meta["keypoints"][8], meta["keypoints"][9]
        a = meta["crop_to_image"][0][0]  # crop px -> image px scale
        assert meta["head_size"] == pytest.approx(0.75 * a * math.dist(neck[:2], top[:2]), rel=1e-6)


@pytest.mark.parametrize("problem", ["count", "layout"])
def test_a_head_box_file_that_does_not_pair_up_exits_2(synth_mpii, tmp_path, capsys, problem):
    from scipy.io import savemat

    gt = _gt_valid(synth_mpii)
    bad = str(tmp_path / "bad.mat")
    if problem == "count":
        savemat(bad, {k: gt[k][..., :-1] for k in ("headboxes_src", "pos_gt_src", "jnt_missing")})
    else:
        savemat(bad, {"headboxes_src": gt["headboxes_src"]})
    assert main(_mpii_args(synth_mpii, str(tmp_path / "o"), "val.json", "val", "--head-boxes", bad)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.mat" in err
    assert ("pos_gt_src" in err) if problem == "layout" else ("people" in err)


def test_release_mat_splits_into_the_val_json_people(synth_mpii, tmp_path):
    release = "mpii_human_pose_v1_u12_1.mat"
    val_json = os.path.join(synth_mpii, "annotations", "val.json")
    val_out, train_out = str(tmp_path / "rv"), str(tmp_path / "rt")
    assert main(_mpii_args(synth_mpii, val_out, release, "val", "--val-people", val_json)) == 0
    assert main(_mpii_args(synth_mpii, train_out, release, "train", "--val-people", val_json)) == 0
    val, train = read_manifest(val_out), read_manifest(train_out)
    n_val = len(load_json(val_json))
    n_train = len(load_json(os.path.join(synth_mpii, "annotations", "train.json")))
    assert val["num_samples"] == n_val and train["num_samples"] == n_train
    assert train["skipped"]["validation_person"] == n_val
    # the release's own head rectangles give the same head sizes as gt_valid.mat
    boxes = _gt_valid(synth_mpii)["headboxes_src"]
    expected = sorted(0.6 * np.sqrt(((boxes[1] - boxes[0]) ** 2).sum(axis=0)))
    got = sorted(p["head_size"] for p in val["ground_truth"]["people"].values())
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_head_ratio_measures_the_estimate_constant(synth_mpii, capsys):
    from shards.mpii_ratio import head_ratios

    ann = os.path.join(synth_mpii, "annotations", "val.json")
    heads = os.path.join(synth_mpii, "annotations", "gt_valid.mat")
    assert main(["head-ratio", "--annotations", ann, "--head-boxes", heads]) == 0
    assert "median" in capsys.readouterr().out
    ratios = head_ratios(ann, heads)
    assert len(ratios) > 0 and (ratios > 0).all()


@pytest.mark.parametrize("annotations, flag, words", [
    ("mpii_human_pose_v1_u12_1.mat", "--head-boxes", "carries its own head boxes"),
    ("val.json", "--val-people", "already a json-convention split"),
])
def test_flags_for_the_other_format_exit_2(synth_mpii, tmp_path, capsys, annotations, flag, words):
    other = os.path.join(synth_mpii, "annotations", "gt_valid.mat" if flag == "--head-boxes" else "val.json")
    assert main(_mpii_args(synth_mpii, str(tmp_path / "o"), annotations, "val", flag, other)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and flag in err


def test_val_people_from_another_release_exits_2(synth_mpii, tmp_path, capsys):
    wrong = tmp_path / "other_valid.json"
    wrong.write_text('[{"image": "nowhere.jpg", "center": [10, 10], "scale": 1.0}]')
    assert main(_mpii_args(synth_mpii, str(tmp_path / "o"), "mpii_human_pose_v1_u12_1.mat", "val",
                           "--val-people", str(wrong))) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other_valid.json" in err and "not in" in err
