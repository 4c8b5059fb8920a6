"""Inference throughput of the registered-model package: images/s through the pyfunc (one
process), and through `mlflow models serve --env-manager local` (one uvicorn worker) over loopback
HTTP with base64 JSON. One person box per image (the whole image), flip test as configured.

The package is the one registration writes (trainer/tracking/model_package.py) for random
weights of the given shape; the two paths are timed in interleaved rounds (timing.py).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from trainer.bench.steps import ModelShape
from trainer.bench.timing import interleaved, paired_ratio, summary

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "coco_hg8_256.yaml"


def _package(shape: ModelShape, root: Path) -> str:
    """A pyfunc package for random weights of `shape` on the COCO recipe's settings."""
    from shards.schema import load_schema
    from trainer.config import load_config, to_dict
    from trainer.model import StackedHourglass
    from trainer.tracking.model_package import save_model_package
    config = load_config(RECIPE)
    config.model.stacks, config.model.features, config.model.depth = shape.stacks, shape.features, shape.depth
    config.model.input_size = [shape.input_size, shape.input_size]
    schema = load_schema(config.data.schema)
    torch.manual_seed(0)
    model = StackedHourglass(schema.num_keypoints, shape.stacks, shape.features, shape.depth)
    return save_model_package(str(root / "model"), to_dict(config), schema.to_dict(),
                              state_dict=model.state_dict())


def _photos(count: int, seed: int = 0) -> list[bytes]:
    """JPEG photos (640x480 smooth noise): each becomes one 256x256 person crop."""
    import cv2
    rng = np.random.default_rng(seed)
    photos = []
    for _ in range(count):
        image = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (9, 9), 0)
        photos.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return photos


class _PyfuncWorker:
    """trainer.bench.inference_worker: the pyfunc in a fresh process, one predict per request."""

    def __init__(self, path: str, images: list[str], env: dict[str, str]) -> None:
        import subprocess
        import sys
        self.process = subprocess.Popen([sys.executable, "-m", "trainer.bench.inference_worker", path, *images],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self._expect("ready")

    def _expect(self, word: str) -> None:
        line = self.process.stdout.readline().strip()
        if line != word:
            raise RuntimeError(f"inference worker said {line!r} (exit code {self.process.poll()})")

    def predict(self) -> None:
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        self._expect("done")

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def measure_inference(shape: ModelShape, rounds: int) -> dict:
    """images/s of the pyfunc and of the served model, `shape.batch` images per call. Each runs in
    its own process with the same environment (this one only sends requests): measured in one
    process, the pyfunc ran 3x slower than the same package served, because of this process's
    thread set-up rather than anything MLflow does."""
    import os

    from trainer.dist import free_port
    from trainer.inference.serving import ModelServer, request_body
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    photos = _photos(shape.batch)
    body = request_body(photos)
    with tempfile.TemporaryDirectory(prefix="poseforge-bench-inference-") as scratch:
        path = _package(shape, Path(scratch))
        files = []
        for index, data in enumerate(photos):
            files.append(str(Path(scratch) / f"{index}.jpg"))
            Path(files[-1]).write_bytes(data)
        worker = _PyfuncWorker(path, files, env)
        try:
            with ModelServer(path, free_port(), str(Path(scratch) / "serve.log"), env=env) as server:
                times = interleaved({"pyfunc": worker.predict, "served": lambda: server.invoke(body)},
                                    repeats=rounds, warmup=1)
        finally:
            worker.close()
    result = {"model": shape.label(), "threads": threads, "images_per_call": shape.batch,
              "request_bytes": len(body), "flip_test": True, "processes": "one each, same environment"}
    for name, seconds in times.items():
        result[name] = {**summary(seconds), "images_per_s": shape.batch / summary(seconds)["median_s"]}
    result["served_over_pyfunc_time"] = paired_ratio(times["served"], times["pyfunc"])
    return result
