"""--batch_size auto: the largest batch that trains, found by doubling then bisecting.

Framework-free: a backend supplies ``measure(batch)``, one real training step (forward,
backward, optimizer step) at the run's image size and precision, returning the peak memory it
used, or None when the framework ran out of memory.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from pokedex_trainer.errors import UserError

logger = logging.getLogger(__name__)

SAFETY_MARGIN = 0.9     # keep 10 % for fragmentation, augmentation peaks, other processes
MAX_BATCH = 1024
START_BATCH = 2         # BatchNorm cannot train on a single image


@dataclass
class BatchSearch:
    """Outcome of a search.

    Args:
        largest: largest batch that trained within the limit.
        chosen: the batch to use (largest with the safety margin).
        limit_bytes: the memory bound the search respected.
        device: what the memory bound is of ("GPU memory", "RAM").
        tried: {batch: peak bytes or None for out-of-memory}.
    """

    largest: int
    chosen: int
    limit_bytes: int
    device: str
    tried: dict

    def describe(self) -> str:
        return (f"batch size {self.chosen} (largest that trained: {self.largest}, minus a "
                f"{round((1 - SAFETY_MARGIN) * 100)} % margin; bounded by "
                f"{self.limit_bytes / 2**20:.0f} MB of {self.device})")


def find_batch_size(measure: Callable[[int], int | None], limit_bytes: int, device: str,
                    resettable: bool, cap: int = MAX_BATCH) -> BatchSearch:
    """Double from 2 until a step runs out of memory (or passes ``limit_bytes``), then bisect.

    Args:
        measure: one training step at a batch size; its peak memory in bytes, None on OOM.
        limit_bytes: the most memory a step may use.
        device: words for the report.
        resettable: whether each ``measure`` call reports its own peak. Process RAM is not (the
            allocator keeps what it had), so on CPU the bisection is replaced by a straight-line
            estimate from the doubling steps, which only grow.
        cap: largest batch tried.
    """
    tried: dict[int, int | None] = {}

    def fits(batch: int) -> bool:
        peak = measure(batch)
        tried[batch] = peak
        ok = peak is not None and peak <= limit_bytes
        logger.info("batch %d: %s", batch, "fits" if ok else "out of memory" if peak is None
                    else f"{peak / 2**20:.0f} MB > limit")
        return ok

    good, bad = 0, None
    batch = START_BATCH
    while batch <= cap:
        if not fits(batch):
            bad = batch
            break
        good, batch = batch, batch * 2
    if good == 0:
        raise UserError(f"even a batch of {START_BATCH} does not fit in {limit_bytes / 2**20:.0f} MB of "
                        f"{device}: lower --image_size or use a smaller --model_type")
    if bad is not None:
        if resettable:
            low, high = good, bad
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (middle, high) if fits(middle) else (low, middle)
            good = low
        else:
            good = _linear_estimate(tried, good, bad, limit_bytes)
    chosen = max(1, int(good * SAFETY_MARGIN))
    return BatchSearch(good, chosen, limit_bytes, device, tried)


def _linear_estimate(tried: dict, good: int, bad: int, limit_bytes: int) -> int:
    points = sorted((b, p) for b, p in tried.items() if p is not None and p <= limit_bytes)
    if len(points) < 2:
        return good
    (b1, p1), (b2, p2) = points[-2], points[-1]
    slope = (p2 - p1) / (b2 - b1)
    if slope <= 0:
        return good
    estimate = b2 + int((limit_bytes - p2) / slope)
    return max(good, min(bad - 1, estimate))


class PeakRSS:
    """Context manager sampling this process's resident memory; ``peak`` in bytes."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def ram_limit(memory_limit_mb: int | None) -> int:
    """Bytes a CPU step may reach: the given limit, or what the process has plus what it may
    still use (its container's limit included)."""
    import psutil

    from pokedex_trainer.machine.memory import memory_available

    if memory_limit_mb:
        return memory_limit_mb * 2**20
    return psutil.Process().memory_info().rss + memory_available()
