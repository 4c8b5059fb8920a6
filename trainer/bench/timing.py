"""Timing helpers for the benchmarks: warm-up, A/B/... interleaving, medians and best-of.

The machine these run on is shared, so variants are interleaved (A B A B ...) rather than run
in blocks: a burst of load from elsewhere then slows every variant alike, and ratios taken pair
by pair stay meaningful even when absolute times drift.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable


def time_call(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each variant, `repeats` rounds after `warmup` untimed rounds."""
    return interleaved_measured({name: (lambda fn=fn: time_call(fn)) for name, fn in variants.items()},
                                repeats, warmup)


def interleaved_measured(variants: dict[str, Callable[[], float]], repeats: int,
                         warmup: int = 1) -> dict[str, list[float]]:
    """Like `interleaved`, for variants that measure themselves and return seconds."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(fn())
    return times


def summary(seconds: list[float]) -> dict[str, object]:
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "runs_s": [round(s, 4) for s in seconds],
            "spread": max(seconds) / min(seconds) if min(seconds) > 0 else float("inf")}


def paired_ratio(numerator: list[float], denominator: list[float]) -> dict[str, float]:
    """Median of the round-by-round ratios, and the ratio of the best times."""
    ratios = [a / b for a, b in zip(numerator, denominator)]
    return {"median": statistics.median(ratios), "of_best": min(numerator) / min(denominator),
            "rounds": [round(r, 4) for r in ratios]}


# ---------------------------------------------------------------------------------------------
# Is the machine busy? Load averages include this benchmark's own threads, so the figure that
# decides is the CPU time other processes took while a part ran: /proc/stat's busy time minus
# this process's (and its waited-for children's) CPU time, as a share of all cores' wall time.

BUSY_SHARE = 0.10  # other processes above 10% of the machine: the part's figures are taken under load


def _machine_busy_s() -> float | None:
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class LoadMonitor:
    """Load averages before/after, and other processes' share of the CPUs in between."""

    def __init__(self) -> None:
        self.load_before = _loadavg()
        self._start = (time.perf_counter(), _machine_busy_s(), _own_cpu_s())

    def finish(self) -> dict:
        wall, busy, own = self._start
        elapsed = time.perf_counter() - wall
        busy_now = _machine_busy_s()
        cores = os.cpu_count() or 1
        others = None
        if busy is not None and busy_now is not None and elapsed > 0:
            others = max(0.0, (busy_now - busy) - (_own_cpu_s() - own)) / (elapsed * cores)
        return {"before": self.load_before, "after": _loadavg(), "others_cpu_share": others,
                "busy": others is not None and others > BUSY_SHARE}


def _loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else []


def busy_warning(part: str, load: dict) -> str | None:
    if not load.get("busy"):
        return None
    return (f"WARNING: the machine was busy during '{part}': other processes used "
            f"{100 * load['others_cpu_share']:.0f}% of the CPUs (load {load['before']} -> {load['after']}); "
            "its timings are taken under load")
