"""The training loop, top to bottom: set up, (resume), step, log, evaluate, checkpoint."""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass

import numpy as np
import torch

from shards.schema import load_schema
from trainer import dist
from trainer.backends import make_backend
from trainer.checkpoint import CheckpointManager, load_weights_only
from trainer.codec import HeatmapCodec
from trainer.config import Config, ConfigError, check_data_paths, save_config, to_dict
from trainer.data import build_train_loader, normalize_images, train_batches_per_epoch
from trainer.evaluate import evaluate
from trainer.loss import heatmap_loss
from trainer.model import StackedHourglass
from trainer.optim import build_optimizer, build_scheduler, effective_lr
from trainer.preemption import StopRequest, requeue_slurm_job
from trainer.progress import ConsoleProgress, Throughput
from trainer.tracking import open_tracker


@dataclass
class TrainResult:
    step: int
    best_metric: float | None
    last_eval: dict[str, float]
    stopped_early: bool
    checkpoint: str | None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(config: Config, num_keypoints: int) -> StackedHourglass:
    return StackedHourglass(num_keypoints=num_keypoints, num_stacks=config.model.stacks,
                            num_features=config.model.features, depth=config.model.depth,
                            gradient_checkpointing=config.model.gradient_checkpointing)


def make_codec(config: Config) -> HeatmapCodec:
    width, height = config.model.input_size
    stride = config.model.heatmap_stride
    return HeatmapCodec(input_size=(width, height), heatmap_size=(width // stride, height // stride),
                        sigma=config.codec.sigma, unbiased=config.codec.unbiased)


def train(config: Config, resume: str | None = None, init_from: str | None = None) -> TrainResult:
    check_data_paths(config, need_val=config.eval.every_epochs > 0)
    world = dist.world_from_env()
    device = dist.init_distributed(world, config.dist.timeout_s)
    try:
        return _train(config, world, device, resume, init_from)
    finally:
        dist.teardown()


def _train(config: Config, world: dist.WorldInfo, device: torch.device,
           resume: str | None, init_from: str | None) -> TrainResult:
    # Same initial weights on every rank (DDP also broadcasts them; DeepSpeed does not under ZeRO-3).
    seed_everything(config.seed)
    schema = load_schema(config.data.schema)
    model = build_model(config, schema.num_keypoints)
    if config.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    accumulation = config.optim.accumulation_steps
    batches_per_epoch = train_batches_per_epoch(config, world.world_size)
    steps_per_epoch = config.schedule.steps_per_epoch or batches_per_epoch // accumulation
    if steps_per_epoch < 1 or steps_per_epoch * accumulation > batches_per_epoch:
        raise ConfigError(f"an epoch has {batches_per_epoch} batches per rank: too few for "
                          f"{steps_per_epoch} steps x {accumulation} accumulation steps; lower "
                          f"data.batch_size, optim.accumulation_steps or schedule.steps_per_epoch")
    total_steps = config.schedule.epochs * steps_per_epoch
    global_batch = config.data.batch_size * accumulation * world.world_size
    optimizer = build_optimizer(model.parameters(), config.optim, effective_lr(config.optim, global_batch))
    scheduler = build_scheduler(optimizer, config.schedule, steps_per_epoch)
    checkpoints = CheckpointManager(config.checkpoint_dir, config.checkpoint.keep_last,
                                    config.checkpoint.keep_best, world)
    resume_path = resume or (checkpoints.latest() if config.checkpoint.auto_resume else None)
    if init_from and not resume_path:
        # Before wrapping: ZeRO-3 partitions the parameters of the wrapped model.
        model.load_state_dict(load_weights_only(init_from))
    backend = make_backend(config, world, device)
    backend.wrap(model, optimizer, scheduler)
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_metric": None, "tracking_run_id": None}
    if resume_path:
        state.update(checkpoints.load(backend, resume_path))
    if world.is_main:
        save_config(config, os.path.join(config.output_dir, "config.yaml"))

    progress = ConsoleProgress(total_steps, state["step"], enabled=world.is_main)
    if resume_path:
        progress.message(f"resumed from {resume_path} at step {state['step']} "
                         f"(epoch {state['epoch']}, batch {state['batch_in_epoch']})")
    tracker = open_tracker(config, world, state["tracking_run_id"])
    state["tracking_run_id"] = tracker.run_id
    codec = make_codec(config)
    stop = StopRequest()
    stop.install()
    throughput = Throughput()
    dtype = torch.float32
    last_eval: dict[str, float] = {}
    saved_path = resume_path

    def save(metric: float | None = None) -> None:
        nonlocal saved_path
        saved_path = checkpoints.save(backend, state["step"], {**state, "config": to_dict(config)}, metric)

    backend.model.train()
    stopped_early = False
    for epoch in range(state["epoch"], config.schedule.epochs):
        state["epoch"] = epoch
        is_last = epoch + 1 == config.schedule.epochs
        eval_due = bool(config.eval.every_epochs) and ((epoch + 1) % config.eval.every_epochs == 0 or is_last)
        epoch_batches = steps_per_epoch * accumulation
        batches = iter(build_train_loader(config, world.rank, world.world_size, epoch,
                                          start_batch=state["batch_in_epoch"]))
        while state["batch_in_epoch"] < epoch_batches:
            loss_sum = torch.zeros((), device=device)
            stack_sum = torch.zeros(config.model.stacks, device=device)
            for micro in range(accumulation):
                wait_start = time.perf_counter()
                batch = next(batches)
                images = normalize_images(batch["image"], device, dtype, config.model.channels_last)
                throughput.add(images.shape[0], time.perf_counter() - wait_start)
                keypoints = batch["keypoints"].to(device, non_blocking=True)
                weights = batch["weights"].to(device, non_blocking=True)
                targets, target_weights = codec.encode(keypoints, weights)
                with backend.autocast():
                    heatmaps = backend.model(backend.cast_inputs(images))
                loss, per_stack = heatmap_loss(heatmaps, targets, target_weights)
                backend.backward(loss, is_accumulation_boundary=micro == accumulation - 1)
                loss_sum += loss.detach()
                stack_sum += per_stack.detach()
                state["batch_in_epoch"] += 1
            step_stats = backend.step()
            state["step"] += 1

            if state["step"] % config.log_every_steps == 0 or state["step"] == total_steps:
                images_per_s, wait_share = throughput.collect()
                metrics = {"train/loss": float(loss_sum) / accumulation,
                           "train/lr": optimizer.param_groups[0]["lr"],
                           "train/images_per_s": images_per_s * world.world_size,
                           "train/data_wait_share": wait_share,
                           "train/grad_norm": step_stats.grad_norm,
                           "train/skipped_steps": float(step_stats.skipped)}
                for index, value in enumerate((stack_sum / accumulation).tolist()):
                    metrics[f"train/loss_stack{index}"] = value
                metrics.update(_memory_metrics(device))
                progress.line(state["step"], epoch, metrics)
                tracker.log_metrics(metrics, state["step"])

            # Every rank must agree to stop, or the ones that go on wait forever in a collective.
            if dist.any_rank_true(stop.requested):
                progress.message(f"stop requested ({stop.signal_name or 'another rank'}): "
                                 f"saving at step {state['step']}")
                save()
                stopped_early = True
                break
            # The epoch's end saves anyway (with the eval metric) when it evaluates or is the last.
            epoch_end_saves = state["batch_in_epoch"] == epoch_batches and (eval_due or is_last)
            if state["step"] % config.checkpoint.every_steps == 0 and not epoch_end_saves:
                save()
        if stopped_early:
            break

        state["epoch"], state["batch_in_epoch"] = epoch + 1, 0
        metric = None
        if eval_due:
            last_eval = evaluate(backend, config, world, device, codec, schema,
                                 shards=config.data.val_shards, dtype=dtype)
            backend.model.train()
            metric = last_eval.get(config.eval.metric)
            if world.is_main:
                tracker.log_metrics({f"eval/{k}": v for k, v in last_eval.items()}, state["step"])
                progress.message("eval " + " ".join(f"{k} {v:.4f}" for k, v in last_eval.items()))
            if metric is not None and (state["best_metric"] is None or metric > state["best_metric"]):
                state["best_metric"] = metric
        if is_last or eval_due:
            save(metric)

    if stopped_early and world.is_main:
        requeue_slurm_job()
    tracker.finish("KILLED" if stopped_early else "FINISHED")
    return TrainResult(state["step"], state["best_metric"], last_eval, stopped_early, saved_path)


def _memory_metrics(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"system/gpu_memory_peak_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    try:
        import resource
        return {"system/cpu_rss_peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    except ImportError:
        return {}
