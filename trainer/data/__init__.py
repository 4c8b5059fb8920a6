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

The names below are imported on first use (PEP 562): inference imports `transforms` and
`on_device` only, and must not pull the loader (webdataset, orjson, simplejpeg) with them.
"""
from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "DataErrorTally": "loader", "build_eval_loader": "loader", "build_train_loader": "loader",
    "merge_error_counts": "loader", "stand_in_batch": "loader", "streams_per_rank": "loader",
    "train_batches_per_epoch": "loader",
    "warp_on_device": "loader", "network_inputs": "on_device", "normalize_images": "on_device",
    "ERROR_KINDS": "reader", "DataError": "sources", "eval_manifest": "sources", "eval_num_samples": "sources",
    "resolve_shards": "sources",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value
