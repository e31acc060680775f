"""One option timed the way ``edgetl-device bench`` times it, in a fresh process: ``python -m
edgetl_runtime.compare.probe REQUEST_JSON`` prints one JSON line.

A fresh process per timing, because a process's p50 varies from one process to the next (and from minute to
minute on a shared machine) far more than within one run: the comparison's p50 and its interval come from
several such processes (``compare.latency``). The same process also gives cold start and peak memory.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl_runtime.measure.latency import current_rss_mb, measure, open_backend, process_peak_rss_mb
from edgetl_runtime.preprocess import PreprocessSpec, preprocess_batch

if TYPE_CHECKING:
    from edgetl_runtime.backends.base import Backend


@dataclass(frozen=True)
class ProbeRequest:
    """What one probe times: a bundle at one precision, on the backend and int8 kernel the device chose."""

    bundle: str
    backend: str  # one of measure.latency.TIMED_BACKENDS
    precision: str
    kernel: str | None  # the int8 kernel the comparison's golden check chose (None: not int8)
    threads: int | None
    runs: int  # batch-1 timed calls, as ``edgetl-device bench --runs``
    warmup: int
    max_seconds: float  # batch-1 timing stops past this (after >= 10 calls)
    batch_size: int
    batched_runs: int

    def command(self) -> list[str]:
        return [sys.executable, "-m", "edgetl_runtime.compare.probe", json.dumps(asdict(self))]


def bench_call(backend: Backend, spec: PreprocessSpec) -> partial[object]:
    """What ``edgetl-device bench`` times at batch 1: one random uint8 image at the bundle's size, preprocessed,
    then the backbone (``Learner.backbone`` of one image)."""
    image = np.random.default_rng(0).integers(0, 256, (*spec.input_size, 3), dtype=np.uint8)
    return partial(_run, backend, spec, image)


def _run(backend: Backend, spec: PreprocessSpec, image: np.ndarray) -> object:
    return backend.run(preprocess_batch([image], spec))


def time_backend(backend: Backend, spec: PreprocessSpec, request: ProbeRequest) -> dict[str, Any]:
    """Batch-1 latency with ``measure()`` (bench's warm-up, runs and percentiles), then images per second."""
    batch1 = measure(bench_call(backend, spec), runs=request.runs, warmup=request.warmup,
                     max_seconds=request.max_seconds)  # fmt: skip
    height, width = spec.input_size
    batch = np.random.default_rng(0).standard_normal((request.batch_size, 3, height, width), dtype=np.float32)
    batched = measure(partial(backend.run, batch), runs=request.batched_runs, warmup=1,
                      items_per_call=request.batch_size, max_seconds=request.max_seconds / 2)  # fmt: skip
    return {"batch1": batch1.to_dict(), "batched": batched.to_dict()}


def probe(request: ProbeRequest) -> dict[str, Any]:
    """Cold start (build the backend + the first batch-1 call), the golden check a load runs, the timings,
    then this process's peak RSS; with the kernel and CPU line it ran on."""
    from edgetl_runtime.backends.base import check_against_golden
    from edgetl_runtime.backends.cpu import this_cpu
    from edgetl_runtime.bundle.reader import Bundle

    bundle = Bundle.open(request.bundle)
    precision = bundle.resolve_precision(request.precision)
    spec = bundle.manifest.preprocess
    baseline = current_rss_mb()
    start = time.perf_counter()
    backend = open_backend(bundle, request.backend, precision, request.threads, request.kernel)
    bench_call(backend, spec)()
    cold_ms = (time.perf_counter() - start) * 1e3
    golden = check_against_golden(backend, bundle)  # as a load does before bench's first call
    timed = time_backend(backend, spec, request)
    kernel = getattr(backend, "kernel", None)
    return {
        **timed,
        "cold_start_ms": cold_ms,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": process_peak_rss_mb(),
        "kernel": getattr(kernel, "value", kernel) if precision.value == "int8" else None,
        "backend_name": backend.name,
        "golden_passed": golden.passed,
        "cpu_line": this_cpu().describe(),
    }


def _main(argv: Sequence[str]) -> None:
    print(json.dumps(probe(ProbeRequest(**json.loads(argv[0])))))


if __name__ == "__main__":
    _main(sys.argv[1:])
