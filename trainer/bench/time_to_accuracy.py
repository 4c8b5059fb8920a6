"""Time to accuracy of `bash launch/demo.sh`: the AP after each evaluation against the wall time
since the chain started, for one or more finished demo directories (e.g. three seeds).

    bash launch/demo.sh seed=1 && mv demo /tmp/demo-seed1      # once per seed
    python -m trainer.bench.time_to_accuracy /tmp/demo-seed0 /tmp/demo-seed1 /tmp/demo-seed2 \\
        --json benchmarks/time_to_accuracy.json --png docs/img/demo_ap_vs_time.png

Each directory holds what the demo wrote: chain.json (the chain's start and total seconds,
written by launch/demo.sh), run/metrics.jsonl (every eval record with its wall-clock time) and
run/run.json (the resolved config, for the seed). The verdict compares each chain's final AP and
total time with the issue's target (AP >= 0.60 within 600 s) and is computed here, from the
figures printed next to it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

TARGET_AP = 0.60
TARGET_SECONDS = 600.0
METRIC = "eval/AP"


class DemoDirError(ValueError):
    """A directory that is not a finished demo (one line naming the file)."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DemoDirError(f"{path}: not readable as JSON ({error})") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_chain(directory: str) -> dict[str, Any]:
    """One demo chain: its seed, total seconds, and (seconds since the start, AP) per evaluation."""
    root = Path(directory)
    chain = _read_json(root / "chain.json")
    if not isinstance(chain, dict) or not all(_is_number(chain.get(key)) for key in ("started_at", "seconds")):
        raise DemoDirError(f"{root / 'chain.json'}: needs numbers started_at and seconds (written by launch/demo.sh)")
    metrics_file = root / "run" / "metrics.jsonl"
    try:
        lines = metrics_file.read_text().splitlines()
    except OSError as error:
        raise DemoDirError(f"{metrics_file}: {error.strerror}") from None
    points, eval_seconds, epoch_seconds = [], [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not _is_number(record.get("time")) or not _is_number(record.get("step")):
            raise DemoDirError(f"{metrics_file}:{number}: not a metrics record (a JSON object with step and time)")
        if any(key in record and not _is_number(record[key])
               for key in (METRIC, "time/eval_seconds", "time/epoch_seconds")):
            raise DemoDirError(f"{metrics_file}:{number}: {METRIC} and the time/ values must be numbers")
        if METRIC in record:
            points.append({"seconds": record["time"] - chain["started_at"], "step": record["step"],
                           "AP": record[METRIC]})
        if "time/eval_seconds" in record:
            eval_seconds.append(record["time/eval_seconds"])
        if "time/epoch_seconds" in record:
            epoch_seconds.append(record["time/epoch_seconds"])
    if not points:
        raise DemoDirError(f"{metrics_file}: no {METRIC} record (did the demo's training finish?)")
    run = _read_json(root / "run" / "run.json")
    config = run.get("config", {}) if isinstance(run, dict) else {}
    result = {"directory": str(root), "seed": config.get("seed"), "seconds": float(chain["seconds"]),
              "final_AP": points[-1]["AP"], "evaluations": points}
    if eval_seconds and epoch_seconds:  # what one evaluation costs next to one training epoch
        result["eval_seconds_median"] = statistics.median(eval_seconds)
        result["epoch_seconds_median"] = statistics.median(epoch_seconds)
        result["eval_share_of_epoch"] = result["eval_seconds_median"] / result["epoch_seconds_median"]
    return result


def summarise(chains: list[dict[str, Any]]) -> dict[str, Any]:
    finals = [chain["final_AP"] for chain in chains]
    seconds = [chain["seconds"] for chain in chains]
    met = [chain["final_AP"] >= TARGET_AP and chain["seconds"] <= TARGET_SECONDS for chain in chains]
    summary = {"target": f"AP >= {TARGET_AP} within {TARGET_SECONDS:.0f} s", "runs": len(chains),
               "final_AP": {"min": min(finals), "median": statistics.median(finals), "max": max(finals)},
               "seconds": {"min": min(seconds), "median": statistics.median(seconds), "max": max(seconds)},
               "runs_meeting_target": sum(met),
               "verdict": "met" if all(met) else ("missed" if not any(met) else "met in some runs")}
    shares = [chain["eval_share_of_epoch"] for chain in chains if "eval_share_of_epoch" in chain]
    if shares:
        summary["eval_share_of_epoch_median"] = statistics.median(shares)
    return summary


def draw(chains: list[dict[str, Any]], out_png: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 3.4), dpi=100)
    axes = figure.add_subplot(1, 1, 1)
    for chain in chains:
        xs = [point["seconds"] for point in chain["evaluations"]]
        ys = [point["AP"] for point in chain["evaluations"]]
        axes.plot(xs, ys, marker="o", label=f"seed {chain['seed']}: AP {chain['final_AP']:.3f}, "
                                            f"chain {chain['seconds']:.0f} s")
    axes.axhline(TARGET_AP, color="grey", linestyle="--", linewidth=1)
    axes.axvline(TARGET_SECONDS, color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel("seconds since `bash launch/demo.sh` started")
    axes.set_ylabel("COCO AP (gt boxes, flip)")
    axes.set_ylim(0, 1)
    axes.set_xlim(0, max(TARGET_SECONDS, *(chain["seconds"] for chain in chains)) * 1.05)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(out_png)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo_dirs", nargs="+", help="finished demo directories (launch/demo.sh's demo/)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--png", help="write the AP-vs-time plot here")
    args = parser.parse_args(argv)
    try:
        chains = [read_chain(directory) for directory in args.demo_dirs]
    except DemoDirError as error:
        print(f"time_to_accuracy: {error}", file=sys.stderr)
        return 2
    result = {"chains": chains, "summary": summarise(chains)}
    for chain in chains:
        curve = ", ".join(f"{point['seconds']:.0f} s: {point['AP']:.3f}" for point in chain["evaluations"])
        print(f"seed {chain['seed']}: {curve}; whole chain {chain['seconds']:.0f} s")
    summary = result["summary"]
    print(f"final AP {summary['final_AP']['min']:.3f}-{summary['final_AP']['max']:.3f} (median "
          f"{summary['final_AP']['median']:.3f}), chain {summary['seconds']['min']:.0f}-{summary['seconds']['max']:.0f} s; "
          f"target {summary['target']}: {summary['verdict']} ({summary['runs_meeting_target']} of {summary['runs']})")
    try:
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        if args.png:
            draw(chains, args.png)
    except OSError as error:
        print(f"time_to_accuracy: cannot write {error.filename}: {error.strerror}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
