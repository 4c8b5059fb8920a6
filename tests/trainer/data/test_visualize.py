"""show_batch writes a picture of real batches; the data benchmark returns its figures."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.trainer.data.data_testlib import make_coco_shards, small_config
from shards.schema import COCO17
from trainer.bench.data import run_data_benchmark
from trainer.visualize import draw_skeleton
from trainer.data.show_batch import show_batch


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> tuple[str, str]:
    return make_coco_shards(str(tmp_path_factory.mktemp("vis")), images=4, per_shard=4, seed=2)


@pytest.mark.parametrize("split,warp_on", [("train", "worker"), ("train", "device"), ("val", "device")])
def test_show_batch_writes_a_grid(coco, tmp_path, split, warp_on):
    train, val = coco
    out = str(tmp_path / f"{split}.png")
    show_batch(small_config(train, val, warp_on=warp_on), out, split=split, n=4)
    picture = cv2.imread(out)
    assert picture.shape == (2 * 64 + 2, 2 * 64 + 2, 3)
    assert picture.std() > 10  # people and heatmaps, not an empty canvas


def test_draw_skeleton_marks_only_weighted_joints():
    image = np.zeros((32, 32, 3), np.uint8)
    keypoints = np.zeros((17, 2))
    keypoints[5], keypoints[6] = (8, 8), (24, 24)
    weights = np.zeros(17)
    weights[5] = 1
    drawn = draw_skeleton(image, keypoints, weights, COCO17)
    assert drawn[8, 8].any() and not drawn[24, 24].any() and not image.any()


def test_data_benchmark_reports_the_three_loaders(coco):
    train, _ = coco
    result = run_data_benchmark(train, None, num_samples=8, workers=0, repeats=1,
                                config=small_config(train, batch_size=4))
    assert set(result["samples_per_s_per_worker"]) == {"pipeline", "pipeline_warp_on_device", "raw_loader",
                                                       "decode_only", "device_stage_on_cpu"}
    assert all(v > 0 for v in result["samples_per_s_per_worker"].values())
    assert result["samples"] == 8 and result["device_stage_cpu_ms_per_sample"] > 0
    for mode in ("warp_in_worker", "warp_on_device"):
        assert result[mode]["pipeline_vs_raw"] > 0 and result[mode]["pipeline_vs_decode"] > 0
