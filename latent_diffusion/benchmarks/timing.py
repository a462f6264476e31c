"""Side-by-side timing: warm-up, alternating repetitions, medians, peak memory.

On a shared machine the absolute time of a
variant drifts with the load of the moment. Comparing two variants measured
minutes apart mixes that drift into the ratio; running them in alternation,
A B A B ... (rotating the order each round so neither always goes first), and
taking the median of each puts the same load on both, so their RATIO is what
is trustworthy, not the absolute images/s.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """auto -> cuda if visible, else cpu; anything else is taken as given."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sync(device: torch.device) -> None:
    """Kernels on a GPU run asynchronously: wait for them before reading the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # not every platform has it
        return None


# ------------------------------------------------------------------ peak memory


def _reset_cpu_peak() -> bool:
    """Reset the kernel's resident-set high-water mark (VmHWM) of this process: Linux
    only ("5" > /proc/self/clear_refs). tracemalloc does not see torch's allocator."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_peak_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


class PeakMemory:
    """`with PeakMemory(device) as m: ...` then m.mb: the peak during the block.

    CUDA: torch.cuda.max_memory_allocated (tensors only). CPU: the process's peak
    resident set (everything: Python, torch, data), so only differences between
    variants mean something there."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mb: float | None = None
        self.kind = "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_peak_rss"

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._ok = _reset_cpu_peak()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._ok:
            self.mb = _cpu_peak_mb()
        return False


# ------------------------------------------------------------------ timing


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out if isinstance(out, float) else time.perf_counter() - t0


def alternate(
    variants: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    device: torch.device,
) -> dict[str, dict]:
    """Time every variant `repeats` times, interleaved, after `warmup` untimed calls each.

    Round r runs the variants in an order rotated by r. A variant that returns a
    float has timed itself (e.g. a Lightning fit that excludes its own set-up) and
    that number is used. Returns per variant the list of seconds, their median and
    the peak memory over its first timed call."""
    names = list(variants)
    for _ in range(warmup):
        for n in names:
            variants[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, float | None] = {}
    for r in range(repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            if n not in peaks:
                with PeakMemory(device) as m:
                    times[n].append(time_once(variants[n], device))
                peaks[n] = m.mb
            else:
                times[n].append(time_once(variants[n], device))
        log.info(
            "round %d/%d: %s", r + 1, repeats, ", ".join(f"{n} {times[n][-1]:.3f} s" for n in names)
        )
    return {
        n: {
            "times_s": [round(t, 6) for t in times[n]],
            "median_s": statistics.median(times[n]),
            "peak_mem_mb": None if peaks.get(n) is None else round(peaks[n], 1),
        }
        for n in names
    }


def rate(median_s: float, items: float) -> float:
    """items per second from a median duration."""
    return items / median_s if median_s > 0 else math.inf


def ratio(a: float, b: float) -> float:
    return a / b if b else math.inf
