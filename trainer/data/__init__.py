"""Streaming pose data from WebDataset-format tar shards, as explicit stages:

  sources.py   shard list (directory + manifest, braces, globs, pipe:, urls)
  plan.py      epoch-seeded shard shuffle -> split by rank -> split by stream (data.streams)
  reader.py    tar -> raw samples (webdataset, via shards.reading), bad data counted, rate-limited
               logs, no sleeps
  pipeline.py  shuffle buffer -> decode -> augment -> batch, fixed global batch order, resume
  samples.py   decode + one-warp augmentation of a sample; collation
  loader.py    build_train_loader / build_eval_loader / error counts
  on_device.py batch -> network input on the training device (normalise; warp + colour there
               when data.warp_on resolves to device)
"""
from .loader import (DataErrorTally, build_eval_loader, build_train_loader, merge_error_counts,
                     stand_in_batch, streams_per_rank, train_batches_per_epoch, warp_on_device)
from .on_device import network_inputs, normalize_images
from .reader import ERROR_KINDS
from .sources import DataError, eval_manifest, eval_num_samples, resolve_shards

__all__ = [
    "DataError", "DataErrorTally", "ERROR_KINDS", "build_eval_loader", "build_train_loader",
    "eval_manifest", "eval_num_samples", "merge_error_counts", "network_inputs", "normalize_images", "resolve_shards",
    "stand_in_batch", "streams_per_rank", "train_batches_per_epoch", "warp_on_device",
]
