"""Timing and memory figures of the benchmarks (`python -m bench`, `bench.ema_overhead`) and the
GPU check's throughput step.

`measure` times several functions round-robin (ABBA order: rep r runs them in order, rep r+1 in
reverse, so that drift and load spikes from other processes hit all alike) and reports the
median, min and max seconds of each; the rest are throughput, ratio and memory figures.
"""

from __future__ import annotations

import gc
import math
import statistics
import sys
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stats(times: list[float]) -> dict:
    """median_s, min_s, max_s, reps and the rounded times_s of a list of seconds."""
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "reps": len(times), "times_s": [round(t, 6) for t in times]}


def throughput(st: dict, images: int) -> dict:
    """images/s of a `stats` dict: median from the median time, min from the max time."""
    return {"median": images / st["median_s"], "min": images / st["max_s"],
            "max": images / st["min_s"], "images_per_call": images}


def measure(fns: dict[str, Callable[[], object]], reps: int, warmup: int, device: torch.device,
            warmups: dict[str, Callable[[], object]] | None = None) -> dict[str, dict]:
    """Median/min/max seconds of each function, interleaved ABBA: rep r runs them in order,
    rep r+1 in reverse, so a slow stretch of the machine is shared out evenly.

    `warmups`: a cheaper call per name for the warm-up rounds (default: the function itself).
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            (warmups or fns).get(name, fns[name])()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            sync(device)
            t0 = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: stats(t) for name, t in times.items()}


def ratio(naive_s: float, harness_s: float) -> float:
    """How many times faster the harness is: naive time / harness time (inf for a zero time)."""
    return naive_s / harness_s if harness_s > 0 else math.inf


def free(device: torch.device) -> None:
    """Collect garbage and, on CUDA, return cached blocks, between measurements."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------
# memory
# ------------------------------------------------------------------------------------------------


def cpu_peak_rss_bytes() -> int | None:
    """The process's peak resident set size so far (ru_maxrss; process-wide), None if unknown."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cuda_peak(fn: Callable[[], object], device: torch.device) -> dict | None:
    """Peak CUDA memory of one call: absolute and above what was allocated before it."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {"peak_bytes": int(peak), "above_resident_bytes": int(peak - before)}
