"""Rank-0 console progress and throughput bookkeeping for the training loop."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@dataclass
class Throughput:
    """Images/s and the share of wall time spent waiting for data, over a logging window."""

    images: int = 0
    data_wait_s: float = 0.0
    window_start: float = field(default_factory=time.perf_counter)

    def add(self, images: int, data_wait_s: float) -> None:
        self.images += images
        self.data_wait_s += data_wait_s

    def collect(self) -> tuple[float, float]:
        """Return (images/s, data-wait share) since the last call and start a new window."""
        now = time.perf_counter()
        elapsed = max(now - self.window_start, 1e-9)
        rates = (self.images / elapsed, min(self.data_wait_s / elapsed, 1.0))
        self.images, self.data_wait_s, self.window_start = 0, 0.0, now
        return rates


class ConsoleProgress:
    """One line every `every` steps on rank 0: step, epoch, loss, lr, images/s, data wait, ETA."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool) -> None:
        self.total_steps = total_steps
        self.start_step = start_step
        self.enabled = enabled
        self.started = time.perf_counter()

    def line(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        done = step - self.start_step
        elapsed = time.perf_counter() - self.started
        eta = elapsed / done * (self.total_steps - step) if done else 0.0
        text = (f"step {step}/{self.total_steps} ep {epoch} loss {metrics['train/loss']:.3e} "
                f"lr {metrics['train/lr']:.2e} img/s {metrics['train/images_per_s']:.1f} "
                f"data {100 * metrics['train/data_wait_share']:.0f}% "
                f"gnorm {metrics.get('train/grad_norm', float('nan')):.3g} eta {format_duration(eta)}")
        print(text, file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self.enabled:
            print(f"[poseforge] {text}", file=sys.stderr, flush=True)
