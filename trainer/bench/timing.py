"""Timing helpers for the benchmarks: warm-up, A/B/... interleaving, medians and best-of.

The machine these run on is shared, so variants are interleaved (A B A B ...) rather than run
in blocks: a burst of load from elsewhere then slows every variant alike, and ratios taken pair
by pair stay meaningful even when absolute times drift.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_call(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each variant, `repeats` rounds after `warmup` untimed rounds."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(time_call(fn))
    return times


def summary(seconds: list[float]) -> dict[str, object]:
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "runs_s": [round(s, 4) for s in seconds],
            "spread": max(seconds) / min(seconds) if min(seconds) > 0 else float("inf")}


def paired_ratio(numerator: list[float], denominator: list[float]) -> dict[str, float]:
    """Median of the round-by-round ratios, and the ratio of the best times."""
    ratios = [a / b for a, b in zip(numerator, denominator)]
    return {"median": statistics.median(ratios), "of_best": min(numerator) / min(denominator),
            "rounds": [round(r, 4) for r in ratios]}
