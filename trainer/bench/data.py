"""Data benchmark: samples/s per worker of (a) this pipeline from shards with full augmentation,
(b) a raw loader as mmpose/HRNet do it (read + decode the whole original image per person, then
the same augmentation and warp), (c) decoding the stored crops alone (the ceiling for (a)).
All three use the pipeline's own decoder, warp and reused scratch memory: the figures compare
where the pixels come from, not implementations.

(a) is measured both ways the pipeline can run: warp + colour jitter in the worker
(data.warp_on=worker, what CPU training uses) and in the training device's stage
(data.warp_on=device, the default with CUDA: the worker only reads, decodes and draws the
parameters). The device stage's own cost is timed on this CPU too and reported beside it.

All cases run in this one process, one thread for OpenCV and torch (= one loader worker), on
the same people, interleaved repeat by repeat after a warm-up; the figures are medians. Both
(a) and (b) collate their batches into a reused buffer, as a worker does with its shared-memory
slots (data/transport.py): fresh pages for every batch would cost them both more than a worker
pays. Optionally the real DataLoader with `workers` processes is timed too.
"""
from __future__ import annotations

import copy
import json
import os
import statistics
import time
from functools import partial
from typing import Any, Callable, Optional

import cv2
import numpy as np
import torch

from shards.schema import load_schema

from trainer.data import transforms
from trainer.config import Config
from trainer.data import build_train_loader, resolve_shards
from trainer.data.loader import batch_image_shape
from trainer.data.on_device import network_inputs
from trainer.data.pipeline import StreamSettings, TrainStream
from trainer.data.plan import StreamPlan, augmentation_draws, segments_in_range
from trainer.data.reader import ErrorCounter, RawSample, read_segments
from trainer.data.samples import Record, Sample, SampleMaker, decode_image, parse_record
from trainer.data.sources import DataError


def _people(segments: list) -> list[tuple[int, int]]:
    """(image_id, annotation_id) of the benchmark's samples, in shard order."""
    people = []
    for raw in read_segments(segments, ErrorCounter()):
        meta = json.loads(raw.members["json"])
        people.append((int(meta["image_id"]), int(meta["annotation_id"])))
    return people


def _coco_files(shard_dir: str, coco_root: Optional[str], split: str) -> tuple[str, str]:
    """(annotation json, image directory) of the originals the shards were cut from."""
    manifest = resolve_shards(shard_dir).manifest or {}
    sources = manifest.get("sources", {})
    candidates = []
    if coco_root:
        for images in (f"images/{split}", f"{split}2017", f"images/{split}2017", "images"):
            for name in (f"person_keypoints_{split}.json", f"person_keypoints_{split}2017.json"):
                candidates.append((os.path.join(coco_root, "annotations", name), os.path.join(coco_root, images)))
    if "annotations" in sources and "images_dir" in sources:
        candidates.append((sources["annotations"]["path"], sources["images_dir"]))
    for annotation_file, images in candidates:
        if os.path.isfile(annotation_file) and os.path.isdir(images):
            return annotation_file, images
    raise DataError(f"no COCO annotations + images for split {split!r} under {coco_root!r} "
                    f"(nor in {shard_dir}/manifest.json sources)")


class RawCocoLoader:
    """What top-down frameworks do per person: imread the photo, augment, warp from it. The
    augmentation parameters come from the pipeline's own code (SampleMaker.prepare), for a batch
    of people at once where the benchmark knows the batch (like the pipeline)."""

    def __init__(self, annotations: str, images_dir: str, config: Config, maker: SampleMaker) -> None:
        with open(annotations, encoding="utf-8") as f:
            data = json.load(f)
        self.files = {im["id"]: os.path.join(images_dir, im["file_name"]) for im in data["images"]}
        self.pixels = {im["id"]: int(im["width"]) * int(im["height"]) for im in data["images"]}
        self.annotations = {a["id"]: a for a in data["annotations"]}
        self.config, self.maker = config, maker  # a warp-in-worker maker: (b) warps per person

    def photo_pixels(self, image_id: int) -> int:
        return self.pixels[image_id]

    def _record(self, image_id: int, annotation_id: int) -> Record:
        annotation = self.annotations[annotation_id]
        keypoints = np.asarray(annotation["keypoints"], np.float64).reshape(-1, 3)
        return Record(keypoints, annotation["bbox"], IDENTITY_AFFINE, image_id, annotation_id, 1.0, 0.0,
                      float(annotation.get("area", 0.0)))

    def samples(self, people: list[tuple[int, int]], first_position: int) -> list[Sample]:
        """The people at positions first_position, ...: parameters for all, then each photo."""
        positions = range(first_position, first_position + len(people))
        draws = augmentation_draws(self.config.seed, 0, positions, transforms.NUM_DRAWS)
        prepared = self.maker.prepare([str(a) for _, a in people], [self._record(*p) for p in people], draws)
        for (image_id, _), sample in zip(people, prepared):
            with open(self.files[image_id], "rb") as f:  # the whole photo, rendered as the pipeline renders a crop
                self.maker.render(RawSample(sample.key, {"jpg": f.read()}, self.files[image_id]), sample)
        return prepared


IDENTITY_AFFINE = np.eye(2, 3)


def reused_images() -> Callable[[tuple[int, ...]], np.ndarray]:
    """An image allocator for collate(): one buffer, reused batch after batch (a worker's slot)."""
    return partial(transforms.Scratch().array, "images")


def _rate(run: Callable[[], int]) -> float:
    start = time.perf_counter()
    count = run()
    return count / (time.perf_counter() - start)


def run_data_benchmark(shard_dir: str, coco_root: Optional[str], num_samples: int = 256, workers: int = 0,
                       repeats: int = 3, config: Optional[Config] = None) -> dict[str, Any]:
    """Samples/s per worker of (a) the pipeline (warp in the worker, and warp on the device),
    (b) raw per-person loader, (c) crop decoding only, and the ratios a/b (target >= 3) and
    a/c (target >= 0.5) for each way of running (a)."""
    config = copy.deepcopy(config) if config is not None else Config()
    config.data.train_shards = shard_dir
    source = resolve_shards(shard_dir)
    if source.counts is None:
        raise DataError(f"{shard_dir}: the data benchmark needs a shard directory with a manifest")
    num_samples = min(num_samples, source.num_samples)
    batch = min(config.data.batch_size, num_samples)
    num_samples -= num_samples % batch
    segments = segments_in_range(source.urls, source.counts, 0, num_samples)
    people = _people(segments)
    split = (source.manifest or {}).get("split", "train")
    schema = load_schema(config.data.schema)

    def maker(warp_on_device: bool) -> SampleMaker:
        return SampleMaker(config.model.input_size, config.augment, schema.flip_permutation(),
                           schema.keypoint_names, warp_on_device, config.data.fast_idct)

    raw_loader = RawCocoLoader(*_coco_files(shard_dir, coco_root, split), config, maker(False))

    def stream(warp_on_device: bool) -> TrainStream:
        settings = StreamSettings(config.seed, 0, 0, batch, config.data.shuffle_buffer, train=True)
        return TrainStream(StreamPlan(segments, num_samples, 0), 0, settings, maker(warp_on_device), ErrorCounter(),
                           reused_images(), batch_image_shape(config, source, warp_on_device))

    def pipeline(warp_on_device: bool) -> Callable[[], int]:
        return lambda: sum(b["image"].shape[0] for b in stream(warp_on_device).batches(0))

    def raw() -> int:
        done, allocate = 0, reused_images()
        for start in range(0, len(people), batch):
            chunk = raw_loader.samples(people[start:start + batch], start)
            done += raw_loader.maker.collate(chunk, allocate)["image"].shape[0]
        return done

    def decode_only() -> int:
        count, scratch = 0, transforms.Scratch()  # into reused memory, as the pipeline decodes
        for sample in read_segments(segments, ErrorCounter()):
            parse_record(sample, schema.num_keypoints)
            decode_image(sample, config.data.fast_idct, scratch=scratch)
            count += 1
        return count

    device_batch = next(stream(True).batches(0))

    def device_stage() -> int:
        network_inputs(device_batch, "cpu", config.model.input_size, channels_last=config.model.channels_last)
        return device_batch["image"].shape[0]

    cases = {"pipeline": pipeline(False), "pipeline_warp_on_device": pipeline(True), "raw_loader": raw,
             "decode_only": decode_only, "device_stage_on_cpu": device_stage}
    threads = cv2.getNumThreads(), torch.get_num_threads()
    cv2.setNumThreads(1)  # one loader worker = one core
    torch.set_num_threads(1)
    try:
        for run in cases.values():
            run()  # warm-up: page cache, lazy imports
        runs: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(repeats):
            for name, run in cases.items():
                runs[name].append(_rate(run))
    finally:
        cv2.setNumThreads(threads[0])
        torch.set_num_threads(threads[1])
    medians = {name: statistics.median(values) for name, values in runs.items()}
    crop_pixels = [int(np.prod(decode_image(sample).shape[:2])) for sample in read_segments(segments, ErrorCounter())]
    result: dict[str, Any] = {
        "samples": num_samples, "repeats": repeats, "input_size": list(config.model.input_size),
        "batch_size": batch, "samples_per_s_per_worker": medians, "runs": runs,
        # what decoding costs scale with: the stored crop vs the photo (b) decodes per person
        "mean_crop_pixels": statistics.mean(crop_pixels),
        "mean_photo_pixels": statistics.mean(raw_loader.photo_pixels(image_id) for image_id, _ in people),
    }
    for mode, name in (("warp_in_worker", "pipeline"), ("warp_on_device", "pipeline_warp_on_device")):
        vs_raw, vs_decode = medians[name] / medians["raw_loader"], medians[name] / medians["decode_only"]
        result[mode] = {"pipeline_vs_raw": vs_raw, "pipeline_vs_decode": vs_decode,
                        "targets_met": {"pipeline >= 3x raw": vs_raw >= 3.0,
                                        "pipeline >= 50% of decode": vs_decode >= 0.5}}
    # what the device stage costs when the "device" is this CPU (one thread); a GPU does it in
    # microseconds, and on CPU-only training data.warp_on=auto keeps the warp in the workers
    result["device_stage_cpu_ms_per_sample"] = 1e3 / medians["device_stage_on_cpu"]
    # Warp on the device when the device is this CPU: a sample costs the worker's time plus the
    # device stage's, so that is the rate to compare (the figures above are a GPU projection).
    on_cpu = 1.0 / (1.0 / medians["pipeline_warp_on_device"] + 1.0 / medians["device_stage_on_cpu"])
    result["warp_on_device"]["on_this_cpu"] = {"samples_per_s": on_cpu,
                                               "pipeline_vs_raw": on_cpu / medians["raw_loader"],
                                               "pipeline_vs_decode": on_cpu / medians["decode_only"]}
    if workers > 0:
        everyone = _people(segments_in_range(source.urls, source.counts, 0, source.num_samples))
        result["delivered"] = delivered_rates(config, shard_dir, raw_loader, everyone, workers, batch, repeats)
    return result


class _RawPeople(torch.utils.data.Dataset):
    """(b) as mmpose and HRNet run it: a map-style data set of people, batched by the DataLoader."""

    def __init__(self, raw_loader: RawCocoLoader, people: list[tuple[int, int]]) -> None:
        self.raw_loader, self.people = raw_loader, people

    def __len__(self) -> int:
        return len(self.people)

    def __getitem__(self, index: int) -> Sample:
        return self.raw_loader.samples([self.people[index]], index)[0]


def _consume(batches: Any, skip: int = 1) -> float:
    """Samples/s after `skip` warm-up batches (worker start-up). The trainer reads one byte per
    page of the images, as a copy to the GPU would: fresh shared memory costs it page faults."""
    count, start = 0, None
    for index, batch in enumerate(batches):
        image = batch["image"]
        if index == skip - 1:
            start = time.perf_counter()
        elif index >= skip:
            count += image.shape[0]
            int(image.reshape(-1)[::4096].sum())
    return count / max(time.perf_counter() - start, 1e-9) if start is not None and count else 0.0


def delivered_rates(config: Config, shard_dir: str, raw_loader: RawCocoLoader, people: list[tuple[int, int]],
                    workers: int, batch: int, repeats: int) -> dict[str, Any]:
    """Samples/s that `workers` DataLoader processes deliver to the trainer, each loader with its
    own transport: (a) this pipeline in both warp modes (shared-memory slots, data/transport.py),
    (a) with the warp on the device but DataLoader's own transport, (b) the raw loader as a
    map-style Dataset (DataLoader batching, default transport). One pass over the shards each."""
    def pipeline(warp_on: str, slots: bool = True) -> Callable[[], float]:
        variant = copy.deepcopy(config)
        variant.data.train_shards, variant.data.workers, variant.data.warp_on = shard_dir, workers, warp_on
        variant.data.image_slots, variant.data.batch_size = slots, batch
        return lambda: _consume(build_train_loader(variant, 0, 1, epoch=0))

    def raw() -> float:
        batches = torch.utils.data.DataLoader(_RawPeople(raw_loader, people), batch_size=batch,
                                              num_workers=workers, collate_fn=raw_loader.maker.collate,
                                              prefetch_factor=config.data.prefetch_factor)
        return _consume(batches)

    cases = {"pipeline": pipeline("worker"), "pipeline_warp_on_device": pipeline("device"),
             "pipeline_warp_on_device_without_slots": pipeline("device", slots=False), "raw_loader": raw}
    runs: dict[str, list[float]] = {name: [] for name in cases}
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # inherited by the forked workers: one worker = one core
    try:
        for _ in range(repeats):
            for name, run in cases.items():
                runs[name].append(run() / workers)
    finally:
        cv2.setNumThreads(threads)
    medians = {name: statistics.median(values) for name, values in runs.items()}
    return {"workers": workers, "samples_per_s_per_worker": medians, "runs": runs,
            "pipeline_vs_raw": {mode: medians[name] / medians["raw_loader"] for mode, name in
                                (("warp_in_worker", "pipeline"), ("warp_on_device", "pipeline_warp_on_device"))},
            "slots_speedup": medians["pipeline_warp_on_device"] / medians["pipeline_warp_on_device_without_slots"]}
