"""`bench data` for two checkouts side by side: the same synthetic shards, the builds alternating
run by run (each run one process, one core for OpenCV and torch), load average noted per run.

    python -m trainer.bench.side_by_side --old ../old-checkout --new . --json out.json

With --clock cpu the rates are per CPU second of the one process (the machine's other load does
not inflate them), per worker only. Each run is trainer.bench.data.run_data_benchmark of that checkout on both pairings of
trainer.bench.suite.DATA_PAIRINGS, with that checkout's own config files; figures are medians
over the rounds of each run's medians.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RUN = """
import json, sys, time
from trainer.bench.data import run_data_benchmark
from trainer.config import load_config
shards, coco_root, config_file, samples, repeats, clock = sys.argv[1:7]
if clock == "cpu":  # this process's CPU time: what other jobs on the machine cannot inflate
    time.perf_counter = time.process_time
result = run_data_benchmark(shards, coco_root, num_samples=int(samples), workers=int(clock == "wall"),
                            repeats=int(repeats), config=load_config("configs/" + config_file))
print(json.dumps({"per_worker": result["samples_per_s_per_worker"],
                  "delivered": result.get("delivered", {}).get("samples_per_s_per_worker", {})}))
"""


def run_side(checkout: Path, shards: str, coco_root: str, config_file: str, samples: int, repeats: int,
             clock: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1"}
    load = os.getloadavg()[0]
    done = subprocess.run([sys.executable, "-c", RUN, shards, coco_root, config_file, str(samples), str(repeats),
                           clock],
                          cwd=checkout, env=env, capture_output=True, text=True, check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    rates = figures["per_worker"]  # the ratios: (a)/(b) raw loader, (a)/(c) decode only
    figures["ratios"] = {f"{mode}/{name}": rates[case] / rates[other]
                         for mode, case in (("warp_in_worker", "pipeline"), ("warp_on_device", "pipeline_warp_on_device"))
                         for name, other in (("vs_raw", "raw_loader"), ("vs_decode", "decode_only"))}
    figures["load_before"], figures["load_after"] = round(load, 2), round(os.getloadavg()[0], 2)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--old", required=True, type=Path)
    parser.add_argument("--new", required=True, type=Path)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: as `bench data` (+ one real DataLoader worker); cpu: the process's CPU "
                             "time, per worker only (robust to other jobs' load)")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    sys.path.insert(0, str(args.new.resolve()))
    from trainer.bench.suite import DATA_PAIRINGS
    from trainer.bench.synthetic import synthetic_coco_shards

    runs: dict[str, dict[str, list]] = {name: {"old": [], "new": []} for name, _, _ in DATA_PAIRINGS}
    with tempfile.TemporaryDirectory(prefix="data-side-by-side-") as scratch:
        shard_dirs, coco_root = synthetic_coco_shards(Path(scratch), args.images,
                                                       sorted({side for _, _, side in DATA_PAIRINGS}))
        for round_number in range(args.rounds):
            order = ("old", "new") if round_number % 2 == 0 else ("new", "old")
            for name, config_file, max_side in DATA_PAIRINGS:
                for side in order:
                    checkout = (args.old if side == "old" else args.new).resolve()
                    figures = run_side(checkout, shard_dirs[max_side], coco_root, config_file, args.samples,
                                       args.repeats, args.clock)
                    runs[name][side].append(figures)
                    print(f"round {round_number} {name} {side}: {json.dumps(figures)}", flush=True)
    summary = {}
    for name, sides in runs.items():
        summary[name] = {}
        for kind in ("per_worker", "delivered", "ratios"):
            for case in sides["old"][0][kind]:  # empty with --clock cpu
                old = statistics.median(r[kind][case] for r in sides["old"])
                new = statistics.median(r[kind][case] for r in sides["new"])
                summary[name][f"{kind}/{case}"] = {"old": round(old, 3), "new": round(new, 3),
                                                   "new_vs_old": round(new / old, 3)}
    loads = [r[k] for sides in runs.values() for side in sides.values() for r in side for k in ("load_before", "load_after")]
    result = {"summary": summary, "runs": runs, "clock": args.clock, "load_average_1min": {"min": min(loads), "max": max(loads)},
              "cpu_count": os.cpu_count()}
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    for name, cases in summary.items():
        for case, figures in cases.items():
            print(f"{name:7s} {case:40s} old {figures['old']:8.2f}  new {figures['new']:8.2f}  "
                  f"new/old {figures['new_vs_old']:.3f}")
    print(f"load average (1 min) during the runs: {result['load_average_1min']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
