"""Evaluation and prediction speed on the demo's model and data (configs/demo_cpu.yaml, random
weights, a synthetic COCO-format val set sharded as launch/demo.sh shards it):

  * evaluation: samples/s of trainer.evaluation.runner.predict_samples (the val loader, the
    forward pass, heatmap decoding, mapping back to image pixels) with and without flip test,
    timed in interleaved rounds; the COCO scoring (pycocotools) separately;
  * predict: images/s of trainer.inference.predictor.Predictor (what `trainer predict` and the
    registered model run) on the val photos with their ground-truth boxes, flip as configured;
  * a training sample of the same model (bare forward + backward + optimizer step, one
    process) against an evaluation sample: the evaluation's cost in training samples, from which
    the share of an epoch follows for any train/val size (the demo's own share is measured in its
    run: time/eval_seconds and time/epoch_seconds in metrics.jsonl).

One process, the bench's thread setting (steps.use_all_cores); precision as the config says where
the CPU computes bf16 natively, else fp32 (as launch/demo.sh chooses).
"""
from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

from trainer.bench.steps import ModelShape, bare_step, bare_target, build_model, float_input, use_all_cores
from trainer.bench.timing import interleaved, summary

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo_cpu.yaml"
STORED_MAX_SIDE = 192  # launch/demo.sh's --max-side
DEMO_TRAIN_IMAGES, DEMO_VAL_IMAGES = 800, 100  # launch/demo.sh's defaults


def _autocast_dtype(config) -> torch.dtype | None:
    """The config's autocast dtype as launch/demo.sh picks it: bf16 only where the CPU has it natively."""
    from trainer.backends.base import PRECISION_DTYPES, cpu_has_native_bf16
    dtype = PRECISION_DTYPES[config.precision.dtype]
    return None if dtype == torch.bfloat16 and cpu_has_native_bf16() is False else dtype


def measure_evaluation(val_images: int, rounds: int, config_path: Path = DEMO_CONFIG) -> dict:
    import cv2
    import json

    from shards.schema import load_schema
    from trainer.bench.synthetic import synthetic_coco_shards
    from trainer.config import load_config
    from trainer.data import eval_manifest
    from trainer.dist import WorldInfo
    from trainer.evaluation.runner import predict_samples, score
    from trainer.backends.base import autocast_context
    from trainer.inference.predictor import Predictor
    from trainer.model import build_model as build_config_model
    from trainer.model.codec import make_codec

    threads = use_all_cores()
    config = load_config(config_path)
    schema = load_schema(config.data.schema)
    dtype = _autocast_dtype(config)
    torch.manual_seed(0)
    model = build_config_model(config, schema.num_keypoints)
    if config.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.eval()

    def forward(images: torch.Tensor) -> torch.Tensor:
        with autocast_context(torch.device("cpu"), dtype):
            return model(images)

    with tempfile.TemporaryDirectory(prefix="poseforge-bench-eval-") as scratch:
        shard_dirs, data_root = synthetic_coco_shards(Path(scratch), val_images, [STORED_MAX_SIDE], split="val",
                                                      difficulty="easy")
        shards = shard_dirs[STORED_MAX_SIDE]
        config = copy.deepcopy(config)
        config.data.val_shards = shards
        codec = make_codec(config)
        samples = len(predict_samples(forward, config, WorldInfo(), torch.device("cpu"), codec, schema, shards,
                                      flip=False, dtype=torch.float32))
        records: dict[str, list] = {}

        def run(flip: bool) -> None:
            records[str(flip)] = predict_samples(forward, config, WorldInfo(), torch.device("cpu"), codec, schema,
                                                 shards, flip=flip, dtype=torch.float32)

        times = interleaved({"with_flip": lambda: run(True), "without_flip": lambda: run(False)},
                            repeats=rounds, warmup=1)
        manifest = eval_manifest(shards)
        score_start = time.perf_counter()
        score(records["True"], manifest, schema, allow_incomplete=False)  # every sample exactly once
        score_seconds = time.perf_counter() - score_start

        # predict: the val photos with one ground-truth box per person
        annotations = json.loads((Path(data_root) / "annotations" / "person_keypoints_val.json").read_text())
        files = {image["id"]: image["file_name"] for image in annotations["images"]}
        boxes: dict[int, list] = {image_id: [] for image_id in files}
        for person in annotations["annotations"]:
            if not person.get("iscrowd") and person.get("num_keypoints", 0) > 0:
                boxes[person["image_id"]].append(person["bbox"])
        photos = [cv2.imread(str(Path(data_root) / "images" / "val" / files[i])) for i in files]
        predictor = Predictor({k: v.float() for k, v in model.state_dict().items()}, config, schema)
        people = sum(len(b) for b in boxes.values())
        predict_times = interleaved({"predict": lambda: predictor.predict(photos, list(boxes.values()))},
                                    repeats=rounds, warmup=1)["predict"]

    # one training sample of the same model, same threads and precision
    side = config.model.input_size[0]
    shape = ModelShape(config.model.stacks, config.model.features, side, config.data.batch_size, config.model.depth)
    train_model = build_model(shape, config.model.channels_last)
    optimizer = torch.optim.Adam(train_model.parameters(), lr=1e-3)
    images, target = float_input(shape, config.model.channels_last), bare_target(train_model, shape)
    train_times = interleaved({"train": lambda: bare_step(train_model, optimizer, images, target, dtype)},
                              repeats=max(3, rounds), warmup=2)["train"]
    train_rate = shape.batch / statistics.median(train_times)

    result = {"model": f"{config.model.stacks}x{config.model.features} @ {side}px ({config_path.name})",
              "precision": str(dtype or torch.float32).replace("torch.", ""), "threads": threads, "val_samples": samples,
              "val_images": len(photos), "eval_batch_size": config.eval.batch_size,
              "loader_workers": config.data.workers, "scoring_seconds": score_seconds,
              "predict": {**summary(predict_times), "images_per_s": len(photos) / statistics.median(predict_times),
                          "people_per_s": people / statistics.median(predict_times),
                          "flip_test": predictor.flip_test, "precision": "float32"},
              "train_samples_per_s": train_rate}
    for name, seconds in times.items():
        rate = samples / statistics.median(seconds)
        cost = train_rate / rate  # an evaluation sample's time in training samples
        result[name] = {**summary(seconds), "samples_per_s": rate, "cost_in_train_samples": cost,
                        # launch/demo.sh: 100 val vs 800 train images, people per image alike
                        "demo_share_of_epoch": cost * DEMO_VAL_IMAGES / DEMO_TRAIN_IMAGES}
    result["flip_cost"] = statistics.median(times["with_flip"]) / statistics.median(times["without_flip"])
    return result
