"""One gradient-checkpointing memory probe in a fresh process; prints one JSON line.

usage: python -m trainer.bench.memory_worker --stacks 8 --features 256 --input 256 --batch 8 [--checkpoint-stacks K]
Started by trainer.bench.checkpointing.measure_checkpointing (which sets the malloc environment).
"""
from __future__ import annotations

import argparse
import json

from trainer.bench.checkpointing import memory_probe
from trainer.bench.steps import ModelShape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("stacks", "features", "input", "batch"):
        parser.add_argument(f"--{name}", type=int, required=True)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--checkpoint-stacks", type=int, default=0, help="checkpoint the first K stacks (0: none)")
    args = parser.parse_args()
    shape = ModelShape(args.stacks, args.features, args.input, args.batch, args.depth)
    print(json.dumps(memory_probe(shape, args.checkpoint_stacks, max(args.steps, 1))))


if __name__ == "__main__":
    main()
