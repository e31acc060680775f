"""What ``edgetl bench latency`` measures (``LatencyBenchConfig``) and returns (``LatencyBenchResult``).

Kept apart from the measuring code so the report writer can read both without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl.bench.roofline import FlopCount, PeakEstimate
from edgetl_runtime.errors import ConfigError, raise_all
from edgetl_runtime.manifest import Precision

BACKENDS = ("torch", "onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")
MIN_RUNS = 10  # never fewer timed calls than this, whatever max_seconds says


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
        problems = []
        try:
            object.__setattr__(self, "precisions", tuple(Precision(p) for p in self.precisions))
        except ValueError:
            problems.append(f"precisions must be among fp32, fp16, int8, got {list(self.precisions)}")
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

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: list(getattr(self, k)) for k in ("backends", "batch_sizes", "threads")},
            "precisions": [p.value for p in self.precisions],
            **{k: getattr(self, k) for k in ("runs", "warmup", "max_seconds", "peak_seconds", "image_size", "probe")},
            "output_dir": str(self.output_dir),
        }


@dataclass
class LatencyBenchResult:
    """Everything measured, as plain data for the JSON/CSV/PNG reports."""

    model: str
    image_size: int
    config: LatencyBenchConfig
    environment: dict[str, Any]
    flops: FlopCount
    peaks: list[PeakEstimate]
    cells: list[dict[str, Any]]
    preprocess: list[dict[str, Any]]
    skipped: list[dict[str, str]]
    files: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        plain = {k: getattr(self, k) for k in ("model", "image_size", "environment", "cells", "preprocess", "skipped")}
        return {**plain, "config": self.config.to_dict(), "flops": self.flops.to_dict(),
                "peaks": [p.to_dict() for p in self.peaks]}  # fmt: skip
