"""Shared by the launch tests: a tiny shard set made on the fly, tiny-run overrides, and paths."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"
DEMO_CONFIG = REPO / "configs" / "demo_cpu.yaml"

# A run of a few seconds per epoch on 2 CPU ranks: 1 small stack, small inputs, no eval, no MLflow.
# 104 train samples / (batch 4 x 2 ranks) = 13 steps per epoch.
TINY_OVERRIDES = ["model.stacks=1", "model.features=32", "model.input_size=[64,64]",
                  "data.batch_size=4", "data.workers=1", "schedule.epochs=1",
                  "schedule.warmup_steps=2", "eval.every_epochs=0", "tracking.enabled=false",
                  "log_every_steps=1", "precision.dtype=fp32"]  # exact comparisons need fp32; bf16 is opt-in


def launch_env(**extra: str) -> dict[str, str]:
    """The environment the launch scripts run with: this interpreter, one thread per rank."""
    return {**os.environ, "PYTHON": sys.executable, "POSEFORGE_DIR": str(REPO),
            "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def train_args(shards: Path, output_dir: Path, *overrides: str) -> list[str]:
    """`python -m trainer train` arguments for a tiny demo run on `shards`."""
    return ["--config", str(DEMO_CONFIG), f"data.train_shards={shards / 'train'}",
            f"data.val_shards={shards / 'val'}", f"output_dir={output_dir}",
            *TINY_OVERRIDES, *overrides]


# Each test module that imports the fixture gets its own copy of it: build the data once anyway.
_built: dict[Path, Path] = {}


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's synthetic COCO data (40 train images) converted to train/val shards."""
    from shards.__main__ import main as shards_main

    session_dir = tmp_path_factory.getbasetemp()
    if session_dir in _built:
        return _built[session_dir]
    root = tmp_path_factory.mktemp("launch_data")
    raw, shards = root / "coco", root / "shards"
    assert shards_main(["synth", "--format", "coco", "--out", str(raw), "--images", "40",
                        "--val-images", "10", "--seed", "0", "--workers", "1"]) == 0
    for split in ("train", "val"):
        assert shards_main(["coco", "--annotations", str(raw / "annotations" / f"person_keypoints_{split}.json"),
                            "--images", str(raw / "images" / split), "--out", str(shards / split),
                            "--split", split, "--workers", "1", "--no-progress"]) == 0
    _built[session_dir] = shards
    return shards
