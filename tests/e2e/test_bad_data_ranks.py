"""Bad training data on one of 2 real torchrun ranks (gloo, CPU): a rank whose shards are all
unreadable makes both ranks stop at the same step with one error naming its shards (within
seconds, not after dist.timeout_s); a rank whose shards run out mid-epoch fills its positions
with replacements and both ranks train the whole epoch (equal batch counts)."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from shards.__main__ import main as shards_main
from tests.testlib import DEMO_CONFIG, REPO, TINY_OVERRIDES, launch_env, torchrun_command, train_args
from trainer.config import load_config
from trainer.data import resolve_shards
from trainer.data.loader import streams_per_rank
from trainer.data.plan import train_stream_plans

pytestmark = pytest.mark.slow

TIMEOUT_S = 300.0  # dist.timeout_s: a rank left waiting would fail only after this
RUN_LIMIT_S = 240
STEPS = 13  # 104 samples / (batch 4 x 2 ranks)
STREAMS = "data.streams=12"  # streams of one shard each: some of rank 1's streams have nothing readable


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The tiny demo data set in shards of 4: rank ranges (52 samples) fall on shard boundaries."""
    root = tmp_path_factory.mktemp("bad_ranks")
    raw, shards = root / "coco", root / "shards"
    assert shards_main(["synth", "--format", "coco", "--out", str(raw), "--images", "40", "--val-images", "4",
                        "--seed", "0", "--workers", "1"]) == 0
    for split in ("train", "val"):
        assert shards_main(["coco", "--annotations", str(raw / "annotations" / f"person_keypoints_{split}.json"),
                            "--images", str(raw / "images" / split), "--out", str(shards / split), "--split",
                            split, "--workers", "1", "--samples-per-shard", "4", "--no-progress"]) == 0
    return shards


def rank_shards(shards: Path, rank: int) -> list[str]:
    """The shards `rank` reads in epoch 0, in its reading order (from the trainer's own plan)."""
    config = load_config(DEMO_CONFIG, [*TINY_OVERRIDES, STREAMS, f"data.train_shards={shards / 'train'}"])
    plans = train_stream_plans(resolve_shards(config.data.train_shards), config.seed, 0, rank, 2,
                               streams_per_rank(config), config.data.batch_size, None)
    return list(dict.fromkeys(segment.url for plan in plans for segment in plan.segments))


def damaged_copy(data: Path, tmp_path: Path, which: slice) -> tuple[Path, list[str]]:
    """A copy of the set whose rank-1 shards `which` (in reading order) hold no tar at all."""
    shards = tmp_path / "shards"
    shutil.copytree(data, shards)
    mine, other = rank_shards(shards, 1), rank_shards(shards, 0)
    assert len(mine) == 13 and not set(mine) & set(other)
    for url in mine[which]:
        Path(url).write_bytes(b"this is not a tar file " * 100)
    return shards, mine[which]


def torchrun(shards: Path, output: Path) -> tuple[int, str, float]:
    command = torchrun_command(2, "-m", "trainer", "train",
                               *train_args(shards, output, f"dist.timeout_s={TIMEOUT_S}", STREAMS))
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=RUN_LIMIT_S)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def test_a_rank_with_only_unreadable_shards_stops_both_ranks_with_one_error(data, tmp_path):
    shards, broken = damaged_copy(data, tmp_path, slice(None))
    code, log, seconds = torchrun(shards, tmp_path / "out")
    assert code != 0, log[-3000:]
    assert seconds < TIMEOUT_S / 2, log[-3000:]  # agreed at the first step, no collective timeout
    assert log.count("training data failed on 1 of 2 rank(s)") == 2, log[-3000:]  # each rank says it
    assert "rank 1: rank 1 found no readable training sample" in log
    message = log[log.index("training data failed"):].split("\n")[1]  # the failing rank's line
    assert sum(url in message for url in broken) == 8 and message.endswith("and 5 more"), message
    assert "Timeout" not in log and "timed out" not in log


def test_a_rank_whose_shards_run_out_mid_epoch_trains_the_whole_epoch(data, tmp_path):
    shards, broken = damaged_copy(data, tmp_path, slice(6, None))
    code, log, _ = torchrun(shards, tmp_path / "out")
    assert code == 0, log[-3000:]
    assert f"step {STEPS}/{STEPS}" in log  # rank 0 ran every step: rank 1 kept pace (equal counts)
    assert "filled from another stream" in log  # its dead streams borrowed from its live ones
    assert any(f"{url}: " in log for url in broken)  # the damaged shards are logged by name
