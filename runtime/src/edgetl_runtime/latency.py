"""Honest latency measurement: warm-up, many timed runs, percentiles, and the environment they ran in."""

from __future__ import annotations

import os
import platform
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency in milliseconds over ``runs`` timed calls (after ``warmup`` untimed ones)."""

    runs: int
    warmup: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    items_per_call: int = 1

    @property
    def throughput(self) -> float:
        """Items per second at the median latency."""
        return self.items_per_call / (self.p50_ms / 1e3) if self.p50_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "throughput_per_s": self.throughput}


def measure(
    fn: Callable[[], object],
    *,
    runs: int = 100,
    warmup: int = 10,
    items_per_call: int = 1,
    max_seconds: float | None = None,
) -> LatencyStats:
    """Time ``fn`` ``runs`` times after ``warmup`` calls; stop early (but after >= 10 runs) past ``max_seconds``."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if max_seconds is not None and len(times) >= 10 and time.perf_counter() - start > max_seconds:
            break
    return summarize(times, warmup=warmup, items_per_call=items_per_call)


def summarize(times_s: Sequence[float], *, warmup: int, items_per_call: int = 1) -> LatencyStats:
    """Percentiles of per-call times in seconds; lets callers time interleaved configurations themselves."""
    if len(times_s) == 0:
        raise ValueError("summarize() needs at least one timed call.")
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return LatencyStats(
        len(ms), warmup, float(p50), float(p90), float(p99), float(ms.mean()), float(ms.min()), items_per_call
    )


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if platform.system() == "Darwin" else 1)


def current_rss_mb() -> float:
    """Resident memory right now (Linux ``/proc/self/statm``); falls back to the peak elsewhere."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def cpu_info() -> dict[str, Any]:
    """CPU model, core count and the ISA flags that decide int8 speed (VNNI, AVX-512, AVX2, NEON/dotprod)."""
    model: str = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in {"model name", "Model", "CPU part"} and model in {"", platform.machine()}:
                    model = value.strip()
                elif key in {"flags", "Features"} and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    interesting = [
        "avx2",
        "avx512f",
        "avx512_vnni",
        "avx_vnni",
        "avx512_bf16",
        "amx_int8",
        "fma",
        "f16c",
        "asimd",
        "asimddp",
        "i8mm",
        "fphp",
    ]
    return {
        "model": model,
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "isa": {flag: flag in flags for flag in interesting},
        "vnni": bool({"avx512_vnni", "avx_vnni"} & flags),
    }
