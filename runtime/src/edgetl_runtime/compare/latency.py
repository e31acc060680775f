"""Latency of every option on this device, timed round-robin in one process (a shared machine's drift hits
all alike): batch-1 p50/p90/p99 of preprocessing + backbone, the p50's own 95 % interval, images per second
at a batch size, and, in a fresh process each, cold start and peak memory."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from edgetl_runtime.compare.config import CompareConfig
from edgetl_runtime.compare.options import Option
from edgetl_runtime.latency import LatencyStats, run_probe, summarize
from edgetl_runtime.preprocess import preprocess_batch
from edgetl_runtime.timing import Budget, Runner, round_robin_times

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


def measure_latency(
    options: Sequence[Option], config: CompareConfig, progress: Progress | None = None
) -> dict[str, OptionLatency]:
    """Every option's :class:`OptionLatency`, keyed by option name."""
    if not options:
        return {}
    report = progress or (lambda stage, done, total: None)
    report("latency", 0, len(options))
    budget = Budget(config.runs, config.warmup, config.max_seconds)
    times, warm = round_robin_times([_batch1_runner(o, config) for o in options], np.zeros(1), budget)
    batched_budget = Budget(max(10, config.runs // 4), min(config.warmup, 2), config.max_seconds / 2)
    batch_times, batch_warm = round_robin_times(
        [_batched_runner(o, config) for o in options], np.zeros(1), batched_budget
    )
    report("latency", len(options), len(options))
    out = {}
    for i, option in enumerate(options):
        batch1 = summarize(times[i], warmup=warm[i])
        batched = summarize(batch_times[i], warmup=batch_warm[i], items_per_call=config.batch_size)
        interval = median_interval([t * 1e3 for t in times[i]])
        out[option.name] = OptionLatency(batch1, interval, batched)
    if config.probe:
        for i, option in enumerate(options):
            report("memory", i, len(options))
            out[option.name] = _with_probe(out[option.name], option, config)
        report("memory", len(options), len(options))
    return out


def _batch1_runner(option: Option, config: CompareConfig) -> Runner:
    """What ``edgetl-device bench`` times: one uint8 image at the bundle's size, preprocessed, then the backbone."""
    size = option.spec.input_size
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    backend, spec = option.backend, option.spec

    def call(img: np.ndarray) -> object:
        return backend.run(preprocess_batch([img], spec))

    return Runner(option.backend_name, option.precision, config.threads, call, lambda _: image, option.model_bytes)


def _batched_runner(option: Option, config: CompareConfig) -> Runner:
    height, width = option.spec.input_size
    shape = (config.batch_size, 3, height, width)
    batch = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    return Runner(
        option.backend_name, option.precision, config.threads, option.backend.run, lambda _: batch, option.model_bytes
    )


def _with_probe(latency: OptionLatency, option: Option, config: CompareConfig) -> OptionLatency:
    """Cold start and peak RSS of this option alone, from ``python -m edgetl_runtime.latency`` (a fresh process)."""
    backend = "tensorrt" if option.backend_name.startswith("tensorrt") else "onnxruntime"
    command = [sys.executable, "-m", "edgetl_runtime.latency", str(option.path), "--backend", backend]
    command += ["--precision", option.precision, "--batches", f"1,{config.batch_size}"]
    if config.threads is not None:
        command += ["--threads", str(config.threads)]
    probe = run_probe(command)
    if probe.error is not None:
        return replace(latency, probe_error=probe.error)
    peak = max(probe.peak_rss_mb.values()) if probe.peak_rss_mb else None
    return replace(latency, cold_start_ms=probe.cold_start_ms, peak_rss_mb=peak)
