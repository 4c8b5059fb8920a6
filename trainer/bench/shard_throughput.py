"""Sharding speed and size: people per second per worker when sharding synthetic COCO, and bytes
per stored sample against the source image bytes per person.

    python -m trainer.bench.shard_throughput --images 200 --json shard_bench.json

Each worker count is timed `--repeats` times into a fresh directory; medians are reported.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from shards.__main__ import main as shards_main
from shards.manifest import read_manifest


def shard_once(root: str, out: str, workers: int, max_side: int) -> float:
    started = time.perf_counter()
    code = shards_main(["coco", "--annotations", f"{root}/annotations/person_keypoints_train.json",
                        "--images", f"{root}/images/train", "--out", out, "--split", "train",
                        "--workers", str(workers), "--max-side", str(max_side), "--no-progress"])
    if code != 0:
        raise SystemExit(f"sharding failed with exit status {code}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-side", type=int, nargs="+", default=[384, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "synth")
        assert shards_main(["synth", "--format", "coco", "--out", root, "--images", str(args.images),
                            "--val-images", "2", "--seed", "0", "--workers", "2"]) == 0
        image_dir = os.path.join(root, "images", "train")
        source_bytes = sum(os.path.getsize(os.path.join(image_dir, f)) for f in os.listdir(image_dir))
        figures: dict = {"images": args.images, "source_bytes_per_image": source_bytes / args.images,
                         "runs": []}
        for max_side in args.max_side:
            for workers in args.workers:
                times = []
                for repeat in range(args.repeats):
                    out = os.path.join(tmp, f"shards-{max_side}-{workers}-{repeat}")
                    times.append(shard_once(root, out, workers, max_side))
                manifest = read_manifest(out)
                people = manifest["num_samples"]
                stored = sum(s["bytes"] for s in manifest["shards"])
                median = statistics.median(times)
                figures["runs"].append({
                    "max_side": max_side, "workers": workers, "people": people,
                    "seconds_median": median, "people_per_s": people / median,
                    "people_per_s_per_worker": people / median / workers,
                    "stored_bytes_per_sample": stored / people,
                    "source_bytes_per_person": source_bytes / people,
                })
                for repeat in range(args.repeats):
                    shutil.rmtree(os.path.join(tmp, f"shards-{max_side}-{workers}-{repeat}"), ignore_errors=True)
    figures["load_average_after"] = os.getloadavg()
    with open(args.json, "w") as handle:
        json.dump(figures, handle, indent=1)
    for run in figures["runs"]:
        print(f"max-side {run['max_side']}, {run['workers']} worker(s): {run['people_per_s_per_worker']:.0f} "
              f"people/s per worker; {run['stored_bytes_per_sample'] / 1024:.1f} KB per sample vs "
              f"{run['source_bytes_per_person'] / 1024:.1f} KB of source image per person")
    return 0


if __name__ == "__main__":
    sys.exit(main())
