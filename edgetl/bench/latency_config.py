"""What ``edgetl bench latency`` measures (``LatencyBenchConfig``) and returns (``LatencyBenchResult`` of
``LatencyCell`` rows), as typed records the report writer and the demo read without importing the measuring code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgetl.bench.roofline import FlopCount, PeakEstimate
from edgetl_runtime.arguments import to_enum
from edgetl_runtime.bundle.manifest import Precision
from edgetl_runtime.errors import ConfigError, raise_all
from edgetl_runtime.measure.latency import TIMED_BACKENDS, LatencyStats, Probe
from edgetl_runtime.measure.timing import MIN_RUNS, Budget, PreprocessTiming, Skipped

BACKENDS = ("torch", *TIMED_BACKENDS)  # eager torch is the host's reference beside the device's engines


@dataclass(frozen=True)
class LatencyBenchConfig:
    """What to measure. ``max_seconds`` caps the timed time of each cell (after ``MIN_RUNS`` calls)."""

    backends: tuple[str, ...] = BACKENDS
    precisions: tuple[Precision, ...] = (Precision.FP32, Precision.FP16, Precision.INT8)
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    threads: tuple[int, ...] = (1, 2)
    runs: int = 100
    warmup: int = 10
    max_seconds: float = 4.0
    peak_seconds: float = 1.0
    image_size: int | None = None  # None: the bundle's; else it must match the bundle
    output_dir: Path = Path("runs/bench")
    probe: bool = True  # cold start + peak RSS in a fresh process per backend (a torch import costs seconds)

    def __post_init__(self) -> None:
        problems: list[str] = []
        precisions = tuple(to_enum(Precision, p, "precision", problems) for p in self.precisions)
        object.__setattr__(self, "precisions", precisions)
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        for name in ("backends", "precisions", "batch_sizes", "threads"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
            if not getattr(self, name):
                problems.append(f"{name} must not be empty")
        problems += [f"unknown backend {b!r}; choose from {list(BACKENDS)}" for b in self.backends if b not in BACKENDS]
        problems += [f"batch sizes must be >= 1, got {b}" for b in self.batch_sizes if int(b) < 1]
        problems += [f"thread counts must be >= 1, got {t}" for t in self.threads if int(t) < 1]
        if self.runs < MIN_RUNS:
            problems.append(f"runs must be >= {MIN_RUNS} (percentiles need samples), got {self.runs}")
        if self.warmup < 0:
            problems.append(f"warmup must be >= 0, got {self.warmup}")
        if not self.max_seconds > 0 or not self.peak_seconds > 0:
            problems.append(f"max_seconds and peak_seconds must be > 0, got {self.max_seconds}, {self.peak_seconds}")
        if self.image_size is not None and self.image_size < 8:
            problems.append(f"image_size must be >= 8, got {self.image_size}")
        raise_all(ConfigError, problems, "Invalid LatencyBenchConfig")

    @property
    def budget(self) -> Budget:
        return Budget(self.runs, self.warmup, self.max_seconds)

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: list(getattr(self, k)) for k in ("backends", "batch_sizes", "threads")},
            "precisions": [p.value for p in self.precisions],
            **{k: getattr(self, k) for k in ("runs", "warmup", "max_seconds", "peak_seconds", "image_size", "probe")},
            "output_dir": str(self.output_dir),
        }


@dataclass(frozen=True)
class LatencyCell:
    """One backend x precision x batch x threads: per-call times, the ceiling it is judged against, its probe."""

    backend: str
    precision: str
    batch: int
    threads: int | None  # None: a GPU backend, where host threads do not matter
    stats: LatencyStats
    gflops: float
    peak_gflops: float | None
    model_bytes: int
    probe: Probe = field(default_factory=Probe)
    golden_min_cosine: float | None = None  # None for torch, the reference itself
    golden_passed: bool | None = None

    @property
    def pct_of_peak(self) -> float | None:
        return None if self.peak_gflops is None else 100.0 * self.gflops / self.peak_gflops

    @property
    def key(self) -> tuple[str, str]:
        return (self.backend, self.precision)

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}{'' if self.threads is None else f' t{self.threads}'}"

    def to_dict(self) -> dict[str, Any]:
        """One flat row, as the JSON and CSV reports hold it."""
        return {
            "backend": self.backend, "precision": self.precision, "batch": self.batch, "threads": self.threads,
            **self.stats.to_dict(), "ms_per_image": self.stats.p50_ms / self.batch, "gflops": self.gflops,
            "peak_gflops": self.peak_gflops, "pct_of_peak": self.pct_of_peak, "model_bytes": self.model_bytes,
            "cold_start_ms": self.probe.cold_start_ms, "peak_rss_mb": self.probe.peak_rss_mb.get(str(self.batch)),
            "baseline_rss_mb": self.probe.baseline_rss_mb, "golden_min_cosine": self.golden_min_cosine,
            "golden_passed": self.golden_passed, "probe_error": self.probe.error,
        }  # fmt: skip


@dataclass
class LatencyBenchResult:
    """Everything measured; ``to_dict`` is the JSON report."""

    model: str
    image_size: int
    config: LatencyBenchConfig
    environment: dict[str, Any]
    flops: FlopCount
    peaks: list[PeakEstimate]
    cells: list[LatencyCell]
    preprocess: list[PreprocessTiming]
    skipped: list[Skipped]
    files: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "image_size": self.image_size, "environment": self.environment,
            "cells": [c.to_dict() for c in self.cells], "preprocess": [p.to_dict() for p in self.preprocess],
            "skipped": [asdict(s) for s in self.skipped], "config": self.config.to_dict(),
            "flops": self.flops.to_dict(), "peaks": [p.to_dict() for p in self.peaks],
        }  # fmt: skip
