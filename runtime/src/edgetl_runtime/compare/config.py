"""What a comparison measures, in one frozen config (every field is written into ``results.json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edgetl_runtime.arguments import MAX_THREADS
from edgetl_runtime.backends.base import BACKENDS
from edgetl_runtime.errors import ConfigError, raise_all
from edgetl_runtime.heads import HEADS

ALL_BUT_ONE = "all-but-one"


@dataclass(frozen=True)
class CompareConfig:
    """How bundles are compared on this device.

    Attributes:
        budget_ms: batch-1 p50 latency (preprocessing + backbone) an option must meet to be recommended.
        shots: K, images enrolled per class; each K is scored on ``splits`` random splits (the rest is queried).
        all_but_one: also score K = all but one image per class (exact leave-one-out of the head on the folder).
        splits: random splits per K; the same splits for every option, so their accuracies are paired.
        head: the device head fitted on each split (``auto``: what ``edgetl-device`` uses).
        rank_shots: the K whose accuracy the recommendation ranks by (None: the largest of ``shots``).
        batch_size: images per call for the images-per-second figure.
        processes: fresh processes each option is timed in, interleaved across options; the p50 is the median
            of theirs and its interval comes from their spread (>= 2; 4 is ~1 s per process on a small model).
        runs, warmup, max_seconds: batch-1 timing in each process, as ``edgetl-device bench --runs --warmup``
            (fewer runs, never under 10, past max_seconds).
        threads: onnxruntime intra-op threads (None: its own default, like ``edgetl-device``).
        precisions: the precisions to compare where a bundle ships them (None: every shipped one).
        backend: as ``edgetl-device --backend``; ``auto`` takes TensorRT where a GPU and tensorrt are present.
        probe: time in fresh processes (also giving cold start and peak memory); False times ``processes``
            repeats in this process instead: quicker, but not what ``edgetl-device bench`` sees (no memory).
        seed: the splits' random seed.
    """

    budget_ms: float | None = None
    shots: tuple[int, ...] = (1, 5)
    all_but_one: bool = True
    splits: int = 20
    head: str = "auto"
    rank_shots: int | None = None
    batch_size: int = 8
    processes: int = 4
    runs: int = 100
    warmup: int = 10
    max_seconds: float = 4.0
    threads: int | None = None
    precisions: tuple[str, ...] | None = None
    backend: str = "auto"
    probe: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "shots", tuple(sorted({int(k) for k in self.shots})))
        problems = []
        if not self.shots or min(self.shots) < 1:
            problems.append(f"shots must be positive integers, got {self.shots}")
        if self.rank_shots is not None and self.rank_shots not in self.shots:
            problems.append(f"rank_shots {self.rank_shots} is not one of shots {self.shots}")
        if self.budget_ms is not None and not self.budget_ms > 0:
            problems.append(f"budget_ms must be > 0 ms, got {self.budget_ms}")
        if self.splits < 2:
            problems.append(f"splits must be >= 2 (the spread needs two), got {self.splits}")
        if self.head not in ("auto", *HEADS):
            problems.append(f"head {self.head!r} is not one of {['auto', *sorted(HEADS)]}")
        if self.batch_size < 1 or self.runs < 10 or self.warmup < 0 or self.max_seconds <= 0:
            problems.append("batch_size >= 1, runs >= 10, warmup >= 0 and max_seconds > 0 are required")
        if self.processes < 2:
            problems.append(f"processes must be >= 2 (the interval needs a spread), got {self.processes}")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            problems.append(f"threads must be 1..{MAX_THREADS}, got {self.threads}")
        if self.backend not in BACKENDS:
            problems.append(f"backend {self.backend!r} is not one of {list(BACKENDS)}")
        bad = [p for p in self.precisions or () if p not in ("fp32", "fp16", "int8")]
        if bad:
            problems.append(f"unknown precisions {bad}; choose among fp32, fp16, int8")
        raise_all(ConfigError, problems, "Invalid CompareConfig")

    @property
    def ranked_by(self) -> str:
        """The accuracy column the recommendation ranks by, e.g. ``K=5``."""
        return f"K={self.rank_shots or max(self.shots)}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
