"""Latency of every option on this device, in one process, in blocks over two rounds of alternating order (a
shared machine's drift hits all alike): batch-1 p50/p90/p99 of preprocessing + backbone, the p50's own 95 %
interval, images per second at a batch size, and, in a fresh process each, cold start and peak memory."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any

import numpy as np

from edgetl_runtime.compare.config import CompareConfig
from edgetl_runtime.compare.options import Option
from edgetl_runtime.measure.latency import LatencyStats, run_probe, summarize
from edgetl_runtime.preprocess import preprocess_batch

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class OptionLatency:
    """What one option costs here. ``batch1`` is what ``edgetl-device bench`` times (preprocessing + backbone)."""

    batch1: LatencyStats
    p50_interval_ms: tuple[float, float]  # 95 % interval of the median (order statistics, no distribution assumed)
    batched: LatencyStats  # backbone only, ``items_per_call`` images per call
    cold_start_ms: float | None = None  # fresh process: load the backend + first batch-1 run
    peak_rss_mb: float | None = None  # fresh process, after a batch-1 and a batched run
    probe_error: str | None = None

    @property
    def p50_ms(self) -> float:
        return self.batch1.p50_ms

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["batch1"], out["batched"] = self.batch1.to_dict(), self.batched.to_dict()
        out["p50_interval_ms"] = list(self.p50_interval_ms)
        return out


def median_interval(times_ms: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """A distribution-free ~95 % interval of the median: the order statistics ``n/2 -+ z*sqrt(n)/2``."""
    ordered = np.sort(np.asarray(times_ms, dtype=np.float64))
    n = len(ordered)
    half = z * math.sqrt(n) / 2
    low, high = max(0, math.floor(n / 2 - half) - 1), min(n - 1, math.ceil(n / 2 + half))
    return float(ordered[low]), float(ordered[high])


ROUNDS = 2  # each option is timed in this many blocks, the order reversed each round, so drift is shared


def measure_latency(
    options: Sequence[Option], config: CompareConfig, progress: Progress | None = None
) -> dict[str, OptionLatency]:
    """Every option's :class:`OptionLatency`, keyed by option name."""
    if not options:
        return {}
    report = progress or (lambda stage, done, total: None)
    report("latency", 0, len(options))
    batch1 = [_batch1_call(o) for o in options]
    times = time_blocks(batch1, config.runs, config.warmup, config.max_seconds)
    batched = [partial(o.backend.run, _batch(o, config.batch_size)) for o in options]
    batch_times = time_blocks(batched, max(10, config.runs // 4), min(config.warmup, 2), config.max_seconds / 2)
    report("latency", len(options), len(options))
    out = {}
    for i, option in enumerate(options):
        stats = summarize(times[i], warmup=config.warmup * ROUNDS)
        throughput = summarize(batch_times[i], warmup=min(config.warmup, 2) * ROUNDS, items_per_call=config.batch_size)
        out[option.name] = OptionLatency(stats, median_interval([t * 1e3 for t in times[i]]), throughput)
    if config.probe:
        for i, option in enumerate(options):
            report("memory", i, len(options))
            out[option.name] = _with_probe(out[option.name], option, config)
        report("memory", len(options), len(options))
    return out


def time_blocks(calls: Sequence[Callable[[], object]], runs: int, warmup: int, max_seconds: float) -> list[list[float]]:
    """Per-call seconds of each call, timed in contiguous blocks after ``warmup`` untimed calls, as
    ``edgetl-device bench`` times one bundle, over :data:`ROUNDS` rounds in alternating order.

    Not call-by-call round-robin: switching among a dozen onnxruntime sessions every few calls measured
    1.5-2x slower per call than a block on this 2-core machine (same process, same minute), so a round-robin
    p50 would not be the latency a device running one model sees.
    """
    per_round = max(5, -(-runs // ROUNDS))
    times: list[list[float]] = [[] for _ in calls]
    for round_index in range(ROUNDS):
        order = range(len(calls)) if round_index % 2 == 0 else range(len(calls) - 1, -1, -1)
        for i in order:
            for _ in range(warmup):
                calls[i]()
            start = time.perf_counter()
            for count in range(per_round):
                t0 = time.perf_counter()
                calls[i]()
                times[i].append(time.perf_counter() - t0)
                if count + 1 >= 5 and time.perf_counter() - start > max_seconds / ROUNDS:
                    break
    return times


def _batch1_call(option: Option) -> Callable[[], object]:
    """What ``edgetl-device bench`` times: one uint8 image at the bundle's size, preprocessed, then the backbone."""
    image = np.random.default_rng(0).integers(0, 256, (*option.spec.input_size, 3), dtype=np.uint8)
    backend, spec = option.backend, option.spec
    return lambda: backend.run(preprocess_batch([image], spec))


def _batch(option: Option, size: int) -> np.ndarray:
    height, width = option.spec.input_size
    return np.random.default_rng(0).standard_normal((size, 3, height, width), dtype=np.float32)


def _with_probe(latency: OptionLatency, option: Option, config: CompareConfig) -> OptionLatency:
    """Cold start and peak RSS of this option alone, from a fresh ``python -m edgetl_runtime.measure.latency``."""
    backend = "tensorrt" if option.backend_name.startswith("tensorrt") else "onnxruntime"
    command = [sys.executable, "-m", "edgetl_runtime.measure.latency", str(option.path), "--backend", backend]
    command += ["--precision", option.precision, "--batches", f"1,{config.batch_size}"]
    if config.threads is not None:
        command += ["--threads", str(config.threads)]
    probe = run_probe(command)
    if probe.error is not None:
        return replace(latency, probe_error=probe.error)
    peak = max(probe.peak_rss_mb.values()) if probe.peak_rss_mb else None
    return replace(latency, cold_start_ms=probe.cold_start_ms, peak_rss_mb=peak)
