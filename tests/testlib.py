"""Helpers shared by the whole suite: paths, loopback ports, the one way tests start torchrun,
the environment of a launched job, tiny-run overrides, a loopback http server, the tiny demo shard set (a session
fixture), and a tiny checkpoint with random weights saved through the real backend. Part-specific helpers sit beside their tests (e.g. trainer/data/data_testlib.py)."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest
import torch

from trainer.backends import make_backend
from trainer.checkpoint import CheckpointManager
from trainer.config import Config, to_dict
from trainer.dist import WorldInfo, free_port
from trainer.model import StackedHourglass
from trainer.optim import build_optimizer, build_scheduler

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
DEMO_CONFIG = REPO / "configs" / "demo_cpu.yaml"

# A run of a few seconds per epoch on 2 CPU ranks: 1 small stack, small inputs, no eval, no MLflow.
# 104 train samples / (batch 4 x 2 ranks) = 13 steps per epoch.
TINY_OVERRIDES = ["model.stacks=1", "model.features=32", "model.input_size=[64,64]",
                  "data.batch_size=4", "data.workers=1", "schedule.epochs=1",
                  "schedule.warmup_steps=2", "eval.every_epochs=0", "tracking.enabled=false",
                  "log_every_steps=1", "precision.dtype=fp32"]  # exact comparisons need fp32; bf16 is opt-in


def torchrun_command(nproc: int, *program: str, max_restarts: int = 0,
                     signals: str | None = None) -> list[str]:
    """`torchrun --standalone --nproc-per-node N`, followed by the program: a script path or
    `-m module`, and its arguments. --standalone is a c10d rendezvous on a free localhost port
    with a fresh id: concurrent jobs never share a port, and restarts (--max-restarts) re-form the
    group (a static --master-port rendezvous hung on a restart after a SIGKILLed rank)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "--max-restarts", str(max_restarts)]
    if signals:
        command += ["--signals-to-handle", signals]
    return [*command, *program]


def launch_env(**extra: str) -> dict[str, str]:
    """The environment a launched job runs with: this interpreter and this checkout, one thread
    per rank, CPU DeepSpeed, unbuffered output, none of the scheduler/launcher/tracking variables
    of the shell that runs the tests (a SLURM job id would make SIGUSR1 requeue a real job)."""
    inherited = {k: v for k, v in os.environ.items()
                 if not k.startswith(("SLURM_", "MLFLOW_", "TORCHELASTIC_"))
                 and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**inherited, "PYTHON": sys.executable, "POSEFORGE_DIR": str(REPO), "PYTHONPATH": path,
            "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1", **extra}


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


# A tiny Stacked Hourglass trained for zero steps, saved as a real (DDP-layout) checkpoint.

def tiny_config(output_dir: Path) -> Config:
    config = Config()
    config.model.stacks, config.model.features, config.model.depth = 2, 16, 2
    config.model.input_size = [64, 48]
    config.data.schema = "coco17"
    config.output_dir = str(output_dir)
    return config


def make_checkpoint(output_dir: Path, step: int = 10, metric: float | None = 0.5, seed: int = 0) -> tuple[str, Config]:
    """(checkpoint directory, config) for random weights (seeded), saved through the real backend."""
    config = tiny_config(output_dir)
    torch.manual_seed(seed)
    model = StackedHourglass(17, config.model.stacks, config.model.features, config.model.depth)
    # Non-trivial BatchNorm statistics, so eval-mode predictions depend on every saved buffer.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    optimizer = build_optimizer(model.parameters(), config.optim, config.optim.lr)
    scheduler = build_scheduler(optimizer, config.schedule, 10)
    backend = make_backend(config, WorldInfo(), torch.device("cpu"))
    backend.wrap(model, optimizer, scheduler)
    manager = CheckpointManager(config.checkpoint_dir, 3, True, WorldInfo())
    path = manager.save(backend, step, {"step": step, "config": to_dict(config)}, metric)
    return path, config


def write_images(directory: Path, sizes: list[tuple[int, int]], seed: int = 0) -> list[str]:
    """Random-texture JPEG/PNG files of the given (width, height); returns their paths."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (width, height) in enumerate(sizes):
        image = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (5, 5), 0)
        path = directory / f"{100 + index}.{'png' if index % 2 else 'jpg'}"
        cv2.imwrite(str(path), image)
        paths.append(str(path))
    return paths


@contextlib.contextmanager
def http_server(directory: str) -> Iterator[str]:
    """http://127.0.0.1:PORT serving `directory` while the block runs."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", directory], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("http.server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)
