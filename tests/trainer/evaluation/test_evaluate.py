"""The whole evaluation path, with ground truth standing in for the network.

Ground-truth keypoints from the val shards are encoded to heatmaps, then go through exactly what a
model's output goes through (flip test off/on, decoding, the input->image affine, gathering,
rescoring, pycocotools / PCKh against the manifest's ground truth). A coordinate mistake anywhere in
shards -> data -> codec -> evaluate shows up as a low AP here.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tests.trainer.data.data_testlib import make_coco_shards
from shards.__main__ import main as shards_main
from shards.manifest import read_manifest
from shards.schema import load_schema
from trainer.model.codec import flip_keypoints
from trainer.config import Config
from trainer.data import build_eval_loader
from trainer.dist import WorldInfo
from trainer.evaluation.runner import IncompleteEvaluation, predict_samples, score
from trainer.model.codec import make_codec

SINGLE = WorldInfo(rank=0, local_rank=0, world_size=1, local_world_size=1, node_rank=0)


def eval_config(val: str, schema: str, input_size: int = 256, unbiased: bool = False) -> Config:
    config = Config()
    config.data.schema = schema
    config.data.val_shards = val
    config.data.workers = 1
    config.eval.batch_size = 8
    config.model.input_size = [input_size, input_size]
    config.model.channels_last = False
    config.codec.unbiased = unbiased
    config.codec.refine = "dark" if unbiased else "quarter"
    return config


def ground_truth_forward(config: Config, shards: str, flip: bool):
    """A stand-in for a perfect model: the encoded ground truth of the batch the loop is on, and
    for the flip test's mirrored pass, the encoding of the mirrored keypoints."""
    codec = make_codec(config)
    permutation = load_schema(config.data.schema).flip_permutation()
    truth = iter(build_eval_loader(config, 0, 1, shards))
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(images: torch.Tensor) -> torch.Tensor:
        if pending:  # the mirrored pass of the same batch
            keypoints, weights = flip_keypoints(*pending.pop(), permutation, images.shape[-1])
            return codec.encode(keypoints, weights)[0][:, None]
        batch = next(truth)
        assert batch["image"].shape[0] == images.shape[0]
        if flip:
            pending.append((batch["keypoints"], batch["weights"]))
        return codec.encode(batch["keypoints"], batch["weights"])[0][:, None]

    return forward


@pytest.fixture(scope="module")
def coco_val(tmp_path_factory) -> str:
    _, val = make_coco_shards(str(tmp_path_factory.mktemp("coco")), images=16, per_shard=8, seed=5)
    return val


@pytest.fixture(scope="module")
def mpii_val(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("mpii"))
    raw = os.path.join(root, "raw")
    assert shards_main(["synth", "--format", "mpii", "--out", raw, "--images", "8", "--val-images", "8",
                        "--seed", "3", "--workers", "1"]) == 0
    out = os.path.join(root, "val")
    assert shards_main(["mpii", "--annotations", f"{raw}/annotations/val.json", "--images", f"{raw}/images",
                        "--out", out, "--split", "val", "--workers", "1", "--no-progress",
                        "--head-boxes", f"{raw}/annotations/gt_valid.mat"]) == 0
    return out


def evaluate_truth(config: Config, shards: str, flip: bool) -> tuple[list[dict], dict]:
    schema = load_schema(config.data.schema)
    forward = ground_truth_forward(config, shards, flip)
    records = predict_samples(forward, config, SINGLE, torch.device("cpu"), make_codec(config), schema,
                              shards, flip=flip)
    return records, score(records, read_manifest(shards), schema, allow_incomplete=False)


@pytest.mark.parametrize("unbiased", [False, True], ids=["standard+quarter", "unbiased+dark"])
def test_encoded_ground_truth_scores_high_coco_ap(coco_val, unbiased):
    config = eval_config(coco_val, "coco17", unbiased=unbiased)
    records, metrics = evaluate_truth(config, coco_val, flip=False)
    assert len(records) == read_manifest(coco_val)["num_samples"]
    assert metrics["gt_boxes/AP"] >= 0.97, metrics


def test_flip_test_path_keeps_coordinates(coco_val):
    config = eval_config(coco_val, "coco17", unbiased=True)
    _, metrics = evaluate_truth(config, coco_val, flip=True)
    assert metrics["gt_boxes/AP"] >= 0.97, metrics


def test_encoded_ground_truth_scores_high_pckh(mpii_val):
    config = eval_config(mpii_val, "mpii16", unbiased=True)
    _, metrics = evaluate_truth(config, mpii_val, flip=False)
    assert metrics["PCKh"] >= 99.0, metrics


def test_shifted_predictions_lower_ap(coco_val):
    """The check above can fail: the same path with every prediction moved 8 input px scores low."""
    config = eval_config(coco_val, "coco17", unbiased=True)
    forward = ground_truth_forward(config, coco_val, flip=False)

    def shifted(images: torch.Tensor) -> torch.Tensor:
        return torch.roll(forward(images), shifts=2, dims=-1)  # 2 heatmap px = 8 input px

    schema = load_schema("coco17")
    records = predict_samples(shifted, config, SINGLE, torch.device("cpu"), make_codec(config), schema,
                              coco_val, flip=False)
    metrics = score(records, read_manifest(coco_val), schema, allow_incomplete=False)
    assert metrics["gt_boxes/AP"] < 0.8


def test_missing_or_doubled_val_samples_refuse_to_score(coco_val):
    config = eval_config(coco_val, "coco17", unbiased=True)
    records, _ = evaluate_truth(config, coco_val, flip=False)
    manifest = read_manifest(coco_val)
    schema = load_schema("coco17")
    with pytest.raises(IncompleteEvaluation, match="distinct samples"):
        score(records[1:], manifest, schema, allow_incomplete=False)
    with pytest.raises(IncompleteEvaluation, match="duplicates"):
        score(records + records[:1], manifest, schema, allow_incomplete=False)
    partial = score(records[1:], manifest, schema, allow_incomplete=True)
    assert np.isfinite(partial["gt_boxes/AP"])
