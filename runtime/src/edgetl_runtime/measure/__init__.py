"""Latency measurement a device can run: percentiles, interleaved and round-robin timing, memory, probes."""

from edgetl_runtime.measure.latency import LatencyStats, measure, measure_interleaved, summarize

__all__ = ["LatencyStats", "measure", "measure_interleaved", "summarize"]
