"""Run under torchrun by test_data.py: each rank loads one epoch (2 workers) and rank 0 writes
every rank's batch count and keys to argv[2] as JSON."""
from __future__ import annotations

import json
import sys

import torch.distributed as dist

from tests.trainer.data.data_testlib import small_config
from trainer.data import build_train_loader


def main() -> None:
    shards, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    keys, batches = [], 0
    for batch in build_train_loader(small_config(shards, batch_size=3, workers=2), rank, world, epoch=1):
        keys.extend(batch["key"])
        batches += 1
    gathered = [None] * world
    dist.all_gather_object(gathered, {"rank": rank, "batches": batches, "keys": keys})
    if rank == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
