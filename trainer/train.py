"""The training loop, top to bottom: set up, (resume), step, log, evaluate, checkpoint."""
from __future__ import annotations

import os
import random
import sys
import time
import traceback
from dataclasses import dataclass

import numpy as np
import torch

from shards.schema import load_schema
from trainer import dist, faults
from trainer.backends import make_backend
from trainer.backends.base import slow_precision_warning
from trainer.checkpoint import CheckpointManager, load_weights_only
from trainer.errors import CheckpointError
from trainer.config import Config, ConfigError, check_data_paths, save_config, to_dict
from trainer.data import DataError, DataErrorTally, build_train_loader, stand_in_batch, train_batches_per_epoch
from trainer.evaluation.runner import IncompleteEvaluation, evaluate
from trainer.model import build_model
from trainer.model.compiling import compile_enabled, compile_in_place
from trainer.model.codec import make_codec
from trainer.optim import build_optimizer, build_scheduler, effective_lr
from trainer.preemption import StopRequest, requeue_slurm_job
from trainer.preflight import preflight
from trainer.run_dir import Change, RunLock, record_run
from trainer.progress import ConsoleProgress, Throughput
from trainer.step import micro_batch_loss
from trainer.tracking import open_tracker


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/Inf and optim.on_nonfinite_loss is 'stop'."""


@dataclass
class TrainResult:
    step: int
    best_metric: float | None
    last_eval: dict[str, float]
    stopped_early: bool
    checkpoint: str | None
    stop_signal: str | None = None  # SIGTERM, SIGINT, SIGUSR1 when stopped early


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(config: Config, resume: str | None = None, init_from: str | None = None) -> TrainResult:
    """`resume`: None (auto-resume, same config only), "" (continue with config changes), or a path."""
    world = dist.world_from_env()
    lock, changes = RunLock(config.output_dir), []
    if world.is_main:
        # Rank 0 owns the run directory: checks first, then the lock; until it has them the other
        # ranks wait in init_distributed, and if it fails torchrun stops them.
        changes = preflight(config, accept_changes=resume is not None).changes
        lock.acquire()
    else:
        check_data_paths(config, need_val=config.eval.every_epochs > 0)
    try:
        device = dist.init_distributed(world, config.dist.timeout_s)
    except BaseException:
        lock.release()
        raise
    try:
        return _train(config, world, device, resume, init_from, changes)
    except BaseException as error:
        # The traceback would keep _train's data loader alive past multiprocessing's exit handler,
        # whose terminate() the loader workers ignore: the process would never exit. Free it now.
        traceback.clear_frames(error.__traceback__)
        timeout = dist.explain_timeout(error, world, config.dist.timeout_s)
        if timeout is not None:
            raise timeout from error
        raise
    finally:
        dist.teardown()
        lock.release()


def _train(config: Config, world: dist.WorldInfo, device: torch.device,
           resume: str | None, init_from: str | None, changes: list[Change]) -> TrainResult:
    # Same initial weights on every rank (DDP also broadcasts them; DeepSpeed does not under ZeRO-3).
    seed_everything(config.seed)
    schema = load_schema(config.data.schema)
    model = build_model(config, schema.num_keypoints)
    if config.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    compiled = compile_enabled(config.model.compile, device.type, config.dist.zero_stage)
    if compiled:  # in place, before the backend wraps it; the first step compiles
        compile_in_place(model, config.model.compile_backend)
    accumulation = config.optim.accumulation_steps
    batches_per_epoch = train_batches_per_epoch(config, world.world_size)
    steps_per_epoch = config.schedule.steps_per_epoch or batches_per_epoch // accumulation
    if steps_per_epoch < 1 or steps_per_epoch * accumulation > batches_per_epoch:
        raise ConfigError(f"an epoch has {batches_per_epoch} batches per rank: too few for "
                          f"{steps_per_epoch} steps x {accumulation} accumulation steps; lower "
                          f"data.batch_size, optim.accumulation_steps or schedule.steps_per_epoch")
    epoch_batches = steps_per_epoch * accumulation
    total_steps = config.schedule.epochs * steps_per_epoch
    global_batch = config.data.batch_size * accumulation * world.world_size
    optimizer = build_optimizer(model.parameters(), config.optim, effective_lr(config.optim, global_batch))
    scheduler = build_scheduler(optimizer, config.schedule, steps_per_epoch)
    checkpoints = CheckpointManager(config.checkpoint_dir, config.checkpoint.keep_last,
                                    config.checkpoint.keep_best, world)
    resume_path = resume or (checkpoints.latest() if config.checkpoint.auto_resume else None)
    if init_from and not resume_path:
        # Before wrapping: ZeRO-3 partitions the parameters of the wrapped model.
        _load_init_weights(model, init_from)
    backend = make_backend(config, world, device)
    if world.is_main and (warning := slow_precision_warning(config.precision.dtype, device)):
        print(warning, file=sys.stderr, flush=True)
    backend.wrap(model, optimizer, scheduler)
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_metric": None, "tracking_run_id": None,
             "skipped_steps": 0}
    if resume_path:
        state.update(checkpoints.load(backend, resume_path))
    if world.is_main:
        record_run(config.output_dir, to_dict(config), changes, state["step"])
        save_config(config, os.path.join(config.output_dir, "config.yaml"))

    progress = ConsoleProgress(total_steps, state["step"], enabled=world.is_main)
    if resume_path:
        progress.message(f"resumed from {resume_path} at step {state['step']} "
                         f"(epoch {state['epoch']}, batch {state['batch_in_epoch']})")
    tracker = open_tracker(config, world, state["tracking_run_id"])
    if changes:  # MLflow params cannot change (the sender tags them): log the changes as a new param set
        tracker.log_params({f"resumed_at_{state['step']}/{c.key}": str(c.new) for c in changes})
        progress.message(f"continuing with changed config: {', '.join(map(str, changes))}")
    codec = make_codec(config)
    stop = StopRequest()
    stop.install()
    throughput = Throughput()
    last_eval: dict[str, float] = {}
    saved_path = resume_path

    def save(metric: float | None = None) -> None:
        nonlocal saved_path
        state["tracking_run_id"] = tracker.run_id  # the run may have been created late
        saved_path = checkpoints.save(backend, state["step"], {**state, "config": to_dict(config)}, metric)

    stopped_early = False
    first_step_start = time.perf_counter() if compiled else None
    try:
        backend.model.train()
        for epoch in range(state["epoch"], config.schedule.epochs):
            state["epoch"] = epoch
            is_last = epoch + 1 == config.schedule.epochs
            eval_due = bool(config.eval.every_epochs) and ((epoch + 1) % config.eval.every_epochs == 0 or is_last)
            batches = iter(build_train_loader(config, world.rank, world.world_size, epoch,
                                              start_batch=state["batch_in_epoch"]))
            data_errors = DataErrorTally()
            epoch_start = time.perf_counter()
            while state["batch_in_epoch"] < epoch_batches:
                loss_sum = torch.zeros((), device=device)
                stack_sum = torch.zeros(config.model.stacks, device=device)
                data_failure = None
                for micro in range(accumulation):
                    wait_start = time.perf_counter()
                    batch = None
                    if data_failure is None:
                        try:
                            batch = next(batches)
                        except DataError as error:  # this rank's data failed: its peers hear it below
                            data_failure = str(error)
                    if batch is None:
                        batch = stand_in_batch(config, schema.num_keypoints)  # keeps the collectives paired
                    else:
                        throughput.add(batch["image"].shape[0], time.perf_counter() - wait_start)
                        data_errors.update(batch)
                    loss, per_stack = micro_batch_loss(backend, codec, batch, device, config.model.channels_last)
                    loss = faults.poison_loss(loss, state["step"] + 1)
                    backend.backward(loss, is_accumulation_boundary=micro == accumulation - 1)
                    loss_sum += loss.detach()
                    stack_sum += per_stack.detach()
                    state["batch_in_epoch"] += 1
                step_stats = backend.step()  # skips (and reports) a step with non-finite gradients
                state["step"] += 1
                state["skipped_steps"] += int(step_stats.skipped)
                if first_step_start is not None:
                    progress.message(f"first step {time.perf_counter() - first_step_start:.1f} s (torch.compile included)")
                    first_step_start = None

                # One collective per step: every rank must agree to stop, or the others hang.
                votes = torch.stack([torch.tensor(float(stop.requested), device=device),
                                     (~torch.isfinite(loss_sum)).float(),
                                     torch.tensor(float(data_failure is not None), device=device)])
                stop_votes, nonfinite_votes, data_votes = dist.all_reduce_sum(votes).tolist()
                if data_votes:
                    raise DataError(_agreed_data_failure(data_failure, world))
                if nonfinite_votes and config.optim.on_nonfinite_loss == "stop":
                    raise NonFiniteLoss(f"non-finite loss at step {state['step']} on {int(nonfinite_votes)} "
                                        f"rank(s); the last good checkpoint is {saved_path}")

                if state["step"] % config.log_every_steps == 0 or state["step"] == total_steps:
                    images_per_s, wait_share = throughput.collect()
                    metrics = {"train/loss": float(loss_sum) / accumulation,
                               "train/lr": optimizer.param_groups[0]["lr"],
                               "train/images_per_s": images_per_s * world.world_size,
                               "train/data_wait_share": wait_share,
                               "train/grad_norm": step_stats.grad_norm,
                               "train/skipped_steps": float(state["skipped_steps"]),
                               "train/bad_samples": float(sum(data_errors.totals().values()))}
                    for index, value in enumerate((stack_sum / accumulation).tolist()):
                        metrics[f"train/loss_stack{index}"] = value
                    metrics.update(_memory_metrics(device))
                    progress.line(state["step"], epoch, metrics)
                    tracker.log_metrics(metrics, state["step"])

                if stop_votes:
                    progress.message(f"stop requested ({stop.signal_name or 'by another rank'}): "
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
            # wall time of the (possibly resumed) epoch and of its evaluation: the eval's share
            tracker.log_metrics({"time/epoch_seconds": time.perf_counter() - epoch_start}, state["step"])
            metric, new_best = None, False
            if eval_due:
                eval_start = time.perf_counter()
                predictions_path = os.path.join(config.output_dir, "eval", f"predictions_{state['step']:08d}.json")
                if world.is_main:
                    os.makedirs(os.path.dirname(predictions_path), exist_ok=True)
                try:
                    last_eval = evaluate(backend, config, world, device, codec, schema,
                                         shards=config.data.val_shards, out_path=predictions_path)
                    eval_seconds = time.perf_counter() - eval_start
                    progress.message("eval " + " ".join(f"{k} {v:.4f}" for k, v in last_eval.items() if "/" not in k)
                                     + f" ({eval_seconds:.1f} s)")
                    tracker.log_eval(last_eval, state["step"], predictions_path=predictions_path)
                    tracker.log_metrics({"time/eval_seconds": eval_seconds}, state["step"])
                except IncompleteEvaluation as incomplete:
                    # No metric rather than a wrong one; training (and checkpointing) goes on.
                    last_eval = {}
                    progress.message(f"eval skipped: {incomplete}")
                backend.model.train()
                metric = last_eval.get(config.eval.metric)
                new_best = metric is not None and (state["best_metric"] is None or metric > state["best_metric"])
                if new_best:
                    state["best_metric"] = metric
            if is_last or eval_due:
                save(metric)
                if new_best and world.is_main:
                    if metric > config.tracking.register_min_metric:
                        tracker.register_best(saved_path, config.eval.metric, metric, state["step"])
                    elif config.tracking.registered_model:
                        progress.message(f"not registered: {config.eval.metric} {metric:.4f} is not above "
                                         f"tracking.register_min_metric={config.tracking.register_min_metric}")
    except BaseException:
        tracker.finish("FAILED")
        raise

    # SIGUSR1 is the pre-emption notice (SLURM --signal): come back later. A plain SIGTERM
    # (scancel, or SLURM's own pre-emption, which requeues by itself) only saves and stops.
    if stopped_early and world.is_main and stop.signal_name == "SIGUSR1":
        requeue_slurm_job()
    tracker.finish("KILLED" if stopped_early else "FINISHED")
    return TrainResult(state["step"], state["best_metric"], last_eval, stopped_early, saved_path,
                       # a stop voted by another rank only: report the usual SIGTERM
                       (stop.signal_name or "SIGTERM") if stopped_early else None)


def _load_init_weights(model: torch.nn.Module, path: str) -> None:
    try:
        model.load_state_dict(load_weights_only(path))
    except RuntimeError as error:  # torch's message lists every mismatched tensor (kilobytes)
        first = str(error).split("\n")[1].strip() if "\n" in str(error) else str(error)[:200]
        raise CheckpointError(f"--init-from {path}: its weights do not fit this model "
                              f"(model.stacks/features/depth or data.schema differ; first: {first})") from None


def _agreed_data_failure(failure: str | None, world: dist.WorldInfo) -> str:
    """One message, the same on every rank, naming the ranks whose data failed and why."""
    failures = dist.all_gather_objects(failure)  # only on this path: every rank is here
    lines = [f"rank {rank}: {text}" for rank, text in enumerate(failures) if text]
    return (f"training data failed on {len(lines)} of {world.world_size} rank(s), all ranks stop:\n  "
            + "\n  ".join(lines))


def _memory_metrics(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"system/gpu_memory_peak_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    try:
        import resource
        return {"system/cpu_rss_peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    except ImportError:
        return {}
