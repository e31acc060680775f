"""Timing several loaded backends fairly on one machine: warm-up, round-robin chunks, the golden check beside
each time, and numpy preprocessing timed apart from the model (DESIGN §4.8).

The machine is shared, so every configuration sharing a thread count is timed interleaved: drift and
other jobs hit all of them alike. Callers add their own runners (the host adds eager torch).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from edgetl_runtime.backends.base import GoldenReport, check_against_golden
from edgetl_runtime.bundle import Bundle
from edgetl_runtime.latency import LatencyStats, measure, open_backend, summarize
from edgetl_runtime.manifest import Precision
from edgetl_runtime.preprocess import PreprocessSpec, preprocess_batch

CHUNK = 10  # timed calls per configuration before switching to the next one
MIN_RUNS = 10  # never fewer timed calls than this, whatever max_seconds says
PREPROCESS_SOURCES = {"gray_28x28": (28, 28), "rgb_480x640": (480, 640, 3)}


@dataclass(eq=False)  # hashed by identity: one loaded backend
class Runner:
    """One loaded backend at one precision and thread count; ``call`` takes that backend's native input."""

    backend: str
    precision: str
    threads: int | None  # None: a GPU backend, where host threads do not matter
    call: Callable[[Any], object]
    to_input: Callable[[np.ndarray], Any]
    model_bytes: int
    prepare: Callable[[], None] = lambda: None
    golden: GoldenReport | None = None  # None for a reference that has no golden check (eager torch)

    @property
    def key(self) -> tuple[str, str]:
        return (self.backend, self.precision)


@dataclass(frozen=True)
class Skipped:
    """A requested backend x precision that cannot run here, and why (see ``latency.backend_unavailable``)."""

    backend: str
    precision: str
    reason: str


@dataclass(frozen=True)
class Budget:
    """How long to time each runner: ``runs`` calls, or fewer (never under MIN_RUNS) past ``max_seconds``."""

    runs: int = 100
    warmup: int = 10
    max_seconds: float = 4.0


def bundle_runners(bundle: Bundle, backend: str, precision: Precision, threads: Sequence[int | None]) -> list[Runner]:
    """One runner per thread count (a GPU backend: one), each with its golden check: a fast wrong answer must
    show next to its latency."""
    size = len(bundle.model_bytes(precision))
    counts = threads if backend == "onnxruntime" else (None,)
    runners = []
    for count in counts:
        built = open_backend(bundle, backend, precision, count)
        report = check_against_golden(built, bundle)
        runners.append(Runner(backend, precision.value, count, built.run, lambda x: x, size, golden=report))
    return runners


def time_round_robin(group: Sequence[Runner], images: np.ndarray, budget: Budget) -> list[LatencyStats]:
    """Warm each runner up, then time them in round-robin chunks of ``CHUNK`` calls until each is done.

    Each chunk starts with one untimed call: switching backends leaves cold caches and sleeping (or still
    spinning) thread pools, which belong to the switch, not to the backend.
    """
    inputs = [r.to_input(images) for r in group]
    warm = [_warm_up(r, x, budget) for r, x in zip(group, inputs, strict=True)]
    times: list[list[float]] = [[] for _ in group]
    active = list(range(len(group)))
    while active:
        for i in list(active):
            group[i].prepare()
            group[i].call(inputs[i])
            for _ in range(CHUNK):
                t0 = time.perf_counter()
                group[i].call(inputs[i])
                times[i].append(time.perf_counter() - t0)
                if len(times[i]) >= budget.runs or (len(times[i]) >= MIN_RUNS and sum(times[i]) > budget.max_seconds):
                    active.remove(i)
                    break
    return [summarize(t, warmup=w, items_per_call=len(images)) for t, w in zip(times, warm, strict=True)]


def _warm_up(runner: Runner, inputs: Any, budget: Budget) -> int:
    """Up to ``budget.warmup`` untimed calls, stopping after a quarter of ``max_seconds``; returns the count."""
    runner.prepare()
    start, count = time.perf_counter(), 0
    while count < budget.warmup and (count == 0 or time.perf_counter() - start < budget.max_seconds / 4):
        runner.call(inputs)
        count += 1
    return count


@dataclass(frozen=True)
class PreprocessTiming:
    """numpy preprocessing of one image from ``source_shape`` to the bundle's ``target`` size."""

    source: str
    source_shape: tuple[int, ...]
    target: tuple[int, int]
    stats: LatencyStats

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "source_shape": list(self.source_shape), "target": list(self.target),
                **self.stats.to_dict()}  # fmt: skip


def time_preprocessing(spec: PreprocessSpec, budget: Budget) -> list[PreprocessTiming]:
    """``preprocess_batch`` per image, apart from the model: a 28x28 gray and a 480x640 RGB source."""
    rng = np.random.default_rng(0)
    rows = []
    for name, shape in PREPROCESS_SOURCES.items():
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        call = partial(preprocess_batch, [image], spec)
        stats = measure(call, runs=budget.runs, warmup=3, max_seconds=budget.max_seconds / 2)
        rows.append(PreprocessTiming(name, shape, spec.input_size, stats))
    return rows
