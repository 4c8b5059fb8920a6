"""MPII json convention + a gt_valid.mat-layout file: PCKh from the real head boxes, computed here
the way the MPII evaluation script (HRNet / mmpose) does from the .mat arrays; estimated head sizes
marked and warned; the Newell / HRNet crop convention in the evaluation geometry."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from scipy.io import loadmat

from shards.__main__ import main as shards_main
from shards.manifest import read_manifest
from shards.schema import MPII16
from tests.shards.shards_testlib import read_samples
from tests.trainer.evaluation.test_evaluate import eval_config
from trainer.__main__ import main as trainer_main
from trainer.data import build_eval_loader
from trainer.evaluation.runner import score


@pytest.fixture(scope="module")
def mpii(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("mpii_heads")
    raw = str(root / "raw")
    assert shards_main(["synth", "--format", "mpii", "--out", raw, "--images", "1", "--val-images", "8",
                        "--seed", "4", "--workers", "1"]) == 0
    sets = {}
    for name, extra in (("heads", ["--head-boxes", f"{raw}/annotations/gt_valid.mat"]),
                        ("estimated", ["--estimate-head-size"])):
        sets[name] = str(root / name)
        assert shards_main(["mpii", "--annotations", f"{raw}/annotations/val.json", "--images", f"{raw}/images",
                            "--out", sets[name], "--split", "val", "--max-side", "96", "--workers", "1",
                            "--no-progress", *extra]) == 0
    return {"raw": raw, **sets, "gt": loadmat(f"{raw}/annotations/gt_valid.mat"),
            "json": json.load(open(f"{raw}/annotations/val.json"))}


def _column(key: str) -> tuple[int, int]:
    _, image_id, person = key.split("-")
    return int(image_id), int(person)


def _records(shards: str, gt: dict, seed: int = 0) -> list[dict]:
    """Predictions = pos_gt_src - 1 (0-based) moved by 0-0.8 head sizes in a random direction."""
    rng = np.random.default_rng(seed)
    keys = sorted((key for key, _, _ in read_samples(shards)), key=_column)  # = json order = columns
    boxes = gt["headboxes_src"]
    head = 0.6 * np.linalg.norm(boxes[1] - boxes[0], axis=0)
    records = []
    for i, key in enumerate(keys):
        angle = rng.uniform(0, 2 * np.pi, 16)
        reach = rng.uniform(0, 0.8, 16) * head[i]
        pred = gt["pos_gt_src"][:, :, i] - 1.0 + np.c_[np.cos(angle), np.sin(angle)] * reach[:, None]
        records.append({"key": key, "image_id": _column(key)[0], "keypoints": np.c_[pred, np.ones(16)].tolist(),
                        "box_score": 1.0, "box_area": 1.0})
    return records


def script_pckh(preds: np.ndarray, gt: dict, threshold: float) -> tuple[np.ndarray, float]:
    """The MPII evaluation script on gt_valid.mat arrays: preds [N, 16, 2] 0-based."""
    pos_pred = np.transpose(preds + 1.0, [1, 2, 0])
    jnt_visible = 1 - gt["jnt_missing"]
    uv_err = np.linalg.norm(pos_pred - gt["pos_gt_src"], axis=1)
    headsizes = 0.6 * np.linalg.norm(gt["headboxes_src"][1] - gt["headboxes_src"][0], axis=0)
    scaled = uv_err / (headsizes * np.ones((len(uv_err), 1))) * jnt_visible
    jnt_count = jnt_visible.sum(axis=1)
    pckh = 100.0 * ((scaled <= threshold) * jnt_visible).sum(axis=1) / jnt_count
    mask = np.ones(16, bool)
    mask[6:8] = False
    ratio = jnt_count[mask] / jnt_count[mask].sum()
    return pckh, float((pckh[mask] * ratio).sum())


def test_pckh_from_the_real_head_boxes(mpii):
    records = _records(mpii["heads"], mpii["gt"])
    preds = np.array([[k[:2] for k in r["keypoints"]] for r in records])
    metrics = score(records, read_manifest(mpii["heads"]), MPII16, allow_incomplete=False)
    per_joint, mean = script_pckh(preds, mpii["gt"], 0.5)
    assert 20.0 < mean < 95.0  # a real spread, not all right or all wrong
    assert metrics["pckh0.5/mean"] == pytest.approx(mean) and metrics["PCKh"] == pytest.approx(mean)
    assert metrics["pckh0.5/r_ankle"] == pytest.approx(per_joint[0])
    assert metrics["pckh0.5/head"] == pytest.approx(per_joint[9])
    assert metrics["pckh0.5/shoulder"] == pytest.approx(0.5 * (per_joint[12] + per_joint[13]))
    assert metrics["pckh0.1/mean"] == pytest.approx(script_pckh(preds, mpii["gt"], 0.1)[1])
    # HRNet's printed "Mean@0.1" is pckAll[11] of arange(0, 0.51, 0.01): threshold 0.11
    hrnet = script_pckh(preds, mpii["gt"], np.arange(0, 0.5 + 0.01, 0.01)[11])[1]
    assert metrics["pckh0.11/mean"] == pytest.approx(hrnet)
    assert not any("esthead" in name for name in metrics)


def test_cli_labels_the_head_size_origin(mpii, tmp_path, capsys):
    for name, words in (("heads", "head sizes from head boxes"), ("estimated", "ESTIMATED head sizes")):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(_records(mpii[name], mpii["gt"])))
        assert trainer_main(["eval", "--predictions", str(path), "--shards", mpii[name]]) == 0
        captured = capsys.readouterr()
        assert words in captured.out and "Mean@0.11" in captured.out
        assert ("warning: MPII head sizes are ESTIMATED" in captured.err) == (name == "estimated")


def test_estimated_head_sizes_mark_every_metric_name(mpii):
    metrics = score(_records(mpii["estimated"], mpii["gt"]), read_manifest(mpii["estimated"]), MPII16, False)
    table = [name for name in metrics if name != "PCKh"]
    assert table and all("-esthead/" in name for name in table)
    assert metrics["PCKh"] == metrics["pckh0.5-esthead/mean"]


def test_evaluation_crop_follows_newell_hrnet(mpii):
    """Input centre -> json centre - 1 + (0, 15 x scale); input width -> 1.25 x 200 x scale px."""
    config = eval_config(mpii["heads"], "mpii16")
    people = {}
    names = read_manifest(mpii["heads"])["ground_truth"]["images"]
    for entry in mpii["json"]:
        people.setdefault(entry["image"], []).append(entry)
    width, height = config.model.input_size
    seen = 0
    for batch in build_eval_loader(config, 0, 1, mpii["heads"]):
        for key, affine in zip(batch["key"], batch["input_to_image"].numpy()):
            image_id, person = _column(key)
            entry = people[names[image_id]][person]
            (cx, cy), s = entry["center"], entry["scale"]
            centre = affine[:, :2] @ [(width - 1) / 2.0, (height - 1) / 2.0] + affine[:, 2]
            np.testing.assert_allclose(centre, [cx - 1.0, cy - 1.0 + 15.0 * s], atol=1e-6)
            assert width * np.hypot(*affine[:, 0]) == pytest.approx(1.25 * 200.0 * s, rel=1e-9)
            seen += 1
    assert seen == len(mpii["json"]) and os.path.isdir(mpii["raw"])
