"""The run configuration's sections as typed dataclasses, with their defaults.

Loading, overrides and validation live in `loading.py`; this file is the reference of every key.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal, Optional

class ConfigError(Exception):
    """A configuration mistake the user can fix; the message says where."""


@dataclass
class ModelConfig:
    stacks: int = 8
    features: int = 256
    depth: int = 4
    input_size: list[int] = field(default_factory=lambda: [256, 256])  # width, height
    heatmap_stride: int = 4
    gradient_checkpointing: bool = False
    # with gradient_checkpointing: recompute only the first k stacks (fewer = faster, more memory);
    # null = all stacks. Table of memory vs step time per k: docs/benchmarks.md
    checkpoint_stacks: Optional[int] = None
    channels_last: bool = True
    # torch.compile (in place, before DDP/DeepSpeed wrap it): auto = on with CUDA, off on CPU
    # (measured: docs/benchmarks.md); the first step pays the compilation
    compile: Literal["auto", True, False] = "auto"
    compile_backend: str = "inductor"  # aot_eager: trace without code generation (tests, debugging)


@dataclass
class DataConfig:
    schema: str = "coco17"  # built-in name, or a YAML file describing a custom schema
    train_shards: str = ""  # shard directory (with manifest.json), brace pattern, glob or url
    val_shards: str = ""
    batch_size: int = 32  # per rank, per step (before gradient accumulation)
    workers: int = 4  # data loader processes per rank; batches do not depend on it
    # logical streams per rank: batch g is made by stream g % streams; batches depend on this
    # (not on workers). Workers that divide it share the streams out; others read more
    streams: int = 12
    # raw samples buffered per stream for shuffling: memory ~ streams x this x a sample's bytes
    shuffle_buffer: int = 500
    samples_per_epoch: Optional[int] = None  # set: resampled shards with a fixed epoch length
    # remote shards (http(s), pipe:): downloaded once into this directory by webdataset's
    # FileCache and read locally after that; "" streams them every epoch
    cache_dir: str = ""
    targets_on_device: bool = True  # heatmaps made by the codec on the training device
    # where training images are warped + colour-jittered: in the loader workers (OpenCV), or on
    # the training device (grid_sample; workers only decode); auto = device when CUDA is used
    warp_on: Literal["auto", "worker", "device"] = "auto"
    prefetch_factor: int = 4
    # workers collate images into reused shared memory (data/transport.py); false: DataLoader's way
    image_slots: bool = True
    # libjpeg's fast integer IDCT for the stored crops (10% faster; 47 dB PSNR to the exact one)
    fast_idct: bool = True
    max_bad_samples_logged: int = 10  # per worker; the rest are only counted


@dataclass
class AugmentConfig:
    """COCO top-down recipe defaults (mmpose td-hm 256x256 COCO; docs/evaluation.md gives sources)."""

    box_padding: float = 1.25
    scale_range: list[float] = field(default_factory=lambda: [0.75, 1.25])
    # uniform over scale_range, or mmpose's truncated normal (mean = the middle, sigma = half the
    # range, cut at +-1 sigma: RandomBBoxTransform)
    scale_distribution: Literal["uniform", "truncnorm"] = "uniform"
    scale_prob: float = 1.0
    rotation_max: float = 40.0  # degrees
    # truncnorm: sigma = rotation_max, cut at +-1 sigma (mmpose); uniform in +-rotation_max (Newell's port)
    rotation_distribution: Literal["uniform", "truncnorm"] = "truncnorm"
    rotation_prob: float = 0.6
    shift_max: float = 0.16  # fraction of the box size
    shift_prob: float = 0.3
    flip_prob: float = 0.5
    half_body_prob: float = 0.3
    half_body_min_keypoints: int = 9
    colour_jitter: float = 0.2  # brightness/contrast/saturation amplitude


@dataclass
class CodecConfig:
    sigma: float = 2.0
    unbiased: bool = False  # sub-pixel Gaussian centres (pairs with DARK decoding)
    refine: Literal["none", "quarter", "dark"] = "quarter"


@dataclass
class OptimConfig:
    name: Literal["adam", "adamw", "rmsprop", "sgd"] = "adam"
    lr: float = 5e-4
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd and rmsprop
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 0.0  # max global norm; 0 disables clipping
    accumulation_steps: int = 1
    scale_lr_by_batch: bool = False  # lr *= global_batch / base_batch_size
    base_batch_size: int = 256
    on_nonfinite_loss: Literal["skip", "stop"] = "skip"  # skip the step (counted), or stop the run


@dataclass
class ScheduleConfig:
    epochs: int = 210
    steps_per_epoch: Optional[int] = None  # default: derived from the manifest and world size
    kind: Literal["step", "cosine", "constant"] = "step"
    warmup_steps: int = 500
    warmup_factor: float = 0.001
    milestones: list[int] = field(default_factory=lambda: [170, 200])  # epochs
    gamma: float = 0.1
    min_lr_factor: float = 0.0  # cosine floor, as a fraction of lr


@dataclass
class DistConfig:
    backend: Literal["ddp", "deepspeed"] = "ddp"
    zero_stage: int = 0
    deepspeed_config: Optional[str] = None  # JSON/YAML file merged under our settings
    timeout_s: float = 600.0  # collective timeout: a silent rank fails the job, never hangs it


@dataclass
class PrecisionConfig:
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    loss_scale_init: float = 65536.0  # fp16 only


@dataclass
class CheckpointConfig:
    dir: str = ""  # default: <output_dir>/checkpoints
    every_steps: int = 1000
    keep_last: int = 3
    keep_best: bool = True
    auto_resume: bool = True  # start from the newest complete checkpoint in dir


@dataclass
class EvalConfig:
    every_epochs: int = 10
    flip_test: bool = True
    flip_shift: bool = True
    metric: str = "AP"  # the metric that picks the best checkpoint
    allow_incomplete: bool = False  # report metrics even if val samples were lost
    batch_size: int = 32
    # predict drops detector boxes scoring below this (sharding has --score-threshold); the
    # recipes keep every box (mmpose: no bbox_score_thr, HRNet: TEST.IMAGE_THRE 0.0)
    box_score_thr: float = 0.0


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: Optional[str] = None  # default: MLFLOW_TRACKING_URI, else sqlite in output_dir
    experiment: str = "poseforge"
    run_name: Optional[str] = None
    log_every_steps: int = 20
    registered_model: Optional[str] = None  # register the best checkpoint under this name
    alias: str = "champion"
    # a best checkpoint is registered only above this metric value (an AP 0.0 model is no champion)
    register_min_metric: float = 0.0
    # At the job's end, wait at most this long for the server; the rest stays for tracking-sync.
    finish_timeout_s: float = 30.0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 0
    output_dir: str = "runs/default"
    log_every_steps: int = 10

    @property
    def checkpoint_dir(self) -> str:
        return self.checkpoint.dir or os.path.join(self.output_dir, "checkpoints")
