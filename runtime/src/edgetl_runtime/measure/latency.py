"""Honest latency measurement: warm-up, many timed runs, percentiles, and the environment they ran in."""

from __future__ import annotations

import os
import platform
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl_runtime.errors import ConfigError

if TYPE_CHECKING:
    from edgetl_runtime.backends.base import Backend
    from edgetl_runtime.bundle.manifest import Precision
    from edgetl_runtime.bundle.reader import Bundle


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
    p95_ms: float = float("nan")
    max_ms: float = float("nan")
    std_ms: float = float("nan")  # the spread a trtexec / onnxruntime_perf_test user compares runs by

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


def measure_interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    rounds: int = 100,
    calls_per_round: Mapping[str, int] | int = 1,
    warmup_rounds: int = 1,
) -> dict[str, LatencyStats]:
    """Time several functions round-robin: each round calls each one ``calls_per_round`` times, in turn.

    Compared configurations measured this way share whatever else the machine was doing (another
    job, frequency changes), so their ratio is trustworthy even when absolute times drift.
    ``calls_per_round`` balances a slow function against fast ones (one 50 ms fit beside 25 1 ms fits).
    """
    counts = {name: calls_per_round if isinstance(calls_per_round, int) else calls_per_round[name] for name in fns}
    bad = [f"{name}: {n}" for name, n in counts.items() if n < 1]
    if rounds < 1 or warmup_rounds < 0 or bad or not fns:
        raise ConfigError(
            f"measure_interleaved needs functions, rounds >= 1, warmup_rounds >= 0 and calls_per_round >= 1; got "
            f"{len(fns)} functions, rounds={rounds}, warmup_rounds={warmup_rounds}, bad counts {bad}."
        )
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_index in range(warmup_rounds + rounds):
        for name, fn in fns.items():
            for _ in range(counts[name]):
                t0 = time.perf_counter()
                fn()
                if round_index >= warmup_rounds:
                    times[name].append(time.perf_counter() - t0)
    return {name: summarize(times[name], warmup=warmup_rounds * counts[name]) for name in fns}


def summarize(times_s: Sequence[float], *, warmup: int, items_per_call: int = 1) -> LatencyStats:
    """Percentiles of per-call times in seconds; lets callers time interleaved configurations themselves."""
    if len(times_s) == 0:
        raise ValueError("summarize() needs at least one timed call.")
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
    return LatencyStats(
        len(ms),
        warmup,
        float(p50),
        float(p90),
        float(p99),
        float(ms.mean()),
        float(ms.min()),
        items_per_call,
        float(p95),
        float(ms.max()),
        float(ms.std()),
    )


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if platform.system() == "Darwin" else 1)


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(machine busy s, machine total s, this process's and its children's CPU s) now, for :func:`others_share`
    (Linux ``/proc/stat``; None elsewhere)."""
    try:
        with open("/proc/stat") as fh:
            ticks = [int(x) for x in fh.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    ours = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))  # fmt: skip
    return (sum(ticks) - ticks[3] - ticks[4]) / hz, sum(ticks) / hz, ours


def others_share(before: tuple[float, float, float] | None, after: tuple[float, float, float] | None) -> float | None:
    """The share of the machine's CPU that other processes (and the hypervisor's steal) took between two
    snapshots: what a latency measured then competed with. None below half a CPU-second between them, where
    ``/proc/stat``'s 10 ms ticks are too coarse to tell."""
    if before is None or after is None or after[1] - before[1] < 0.5:
        return None
    others = (after[0] - before[0]) - (after[2] - before[2])
    return round(min(1.0, max(0.0, others / (after[1] - before[1]))), 3)


def current_rss_mb() -> float:
    """Resident memory right now (Linux ``/proc/self/statm``); falls back to the peak elsewhere."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def process_peak_rss_mb() -> float:
    """This process image's peak RSS (Linux ``VmHWM``), which, unlike ``ru_maxrss``, ``exec`` resets.

    ``ru_maxrss`` survives ``fork`` + ``exec``, so a subprocess started from a big parent reports the
    parent's peak; a fresh-process probe must read ``VmHWM`` to measure only itself.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return peak_rss_mb()


def cpu_info() -> dict[str, Any]:
    """CPU model, family, core count and the ISA flags that decide int8 speed (``backends.cpu``)."""
    from edgetl_runtime.backends.cpu import this_cpu

    return this_cpu().to_dict()


DISTRIBUTIONS = ("numpy", "onnxruntime", "onnxruntime-gpu", "tensorrt", "edgetl-runtime")


def environment(distributions: Sequence[str] = DISTRIBUTIONS) -> dict[str, Any]:
    """CPU (model, ISA flags, VNNI), platform, library versions and onnxruntime's providers: what every
    measurement depends on."""
    import importlib.metadata

    import onnxruntime

    versions = {}
    for name in distributions:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "cpu": cpu_info(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
    }


# A timing tool names each engine it times: onnxruntime with one execution provider, or TensorRT itself.
ORT_PROVIDERS = {
    "onnxruntime": "CPUExecutionProvider",
    "onnxruntime-cuda": "CUDAExecutionProvider",
    "onnxruntime-tensorrt": "TensorrtExecutionProvider",
}
TIMED_BACKENDS = (*ORT_PROVIDERS, "tensorrt")


def backend_unavailable(bundle: Bundle, backend: str, precision: Precision) -> str | None:
    """Why ``backend`` (one of :data:`TIMED_BACKENDS`) cannot run ``precision`` here, or None when it can."""
    if precision not in bundle.manifest.precisions:
        have = [p.value for p in bundle.manifest.precisions]
        return f"the bundle ships {have} only; re-export with --precision fp32,{precision.value}"
    if backend in ORT_PROVIDERS:
        import onnxruntime as ort

        if ORT_PROVIDERS[backend] not in (available := ort.get_available_providers()):
            return f"onnxruntime has no {ORT_PROVIDERS[backend]} here (providers: {available})"
    if backend == "tensorrt":
        from edgetl_runtime._optional import is_available
        from edgetl_runtime.backends.tensorrt import gpu_available

        if not is_available("tensorrt"):
            return "the tensorrt package is not installed (pip install 'edgetl-runtime[tensorrt]' on an NVIDIA GPU)"
        if not gpu_available():
            return "no CUDA GPU is visible (or cuda-python is missing)"
    return None


def open_backend(
    bundle: Bundle, backend: str, precision: Precision, threads: int | None = None, kernel: str | None = None
) -> Backend:
    """``backend`` (one of :data:`TIMED_BACKENDS`) at exactly ``precision``, not golden-checked: a timing
    tool reports the golden check beside the time instead of refusing to time. ``kernel``: onnxruntime's int8
    kernel (``fast`` / ``exact``; None: the host's exact one), to time what a device chose."""
    from edgetl_runtime.backends import create_backend
    from edgetl_runtime.backends.onnxruntime import HOST_KERNEL, Int8Kernel, OrtBackend

    if backend == "tensorrt":
        return create_backend(bundle, "tensorrt", precision, verify=False)
    if backend not in ORT_PROVIDERS:
        raise ConfigError(f"Unknown backend {backend!r} to time; choose one of {list(TIMED_BACKENDS)}.")
    chosen = Int8Kernel(kernel) if kernel else HOST_KERNEL
    return OrtBackend.from_bundle(bundle, precision, threads=threads, providers=[ORT_PROVIDERS[backend]], kernel=chosen)


@dataclass(frozen=True)
class Probe:
    """A fresh process's cold start and peak memory for one backend x precision (``error`` if it failed)."""

    cold_start_ms: float | None = None
    baseline_rss_mb: float | None = None
    peak_rss_mb: dict[str, float] = field(default_factory=dict)  # batch size -> MB after that batch
    error: str | None = None


def run_probe(command: list[str], timeout: float = 600.0) -> Probe:
    """Run a probe (``python -m edgetl_runtime.measure.latency ...``, or any command printing a probe's JSON on its last
    line) in a fresh interpreter, so the memory measured is that backend's alone."""
    return Probe(**run_json_process(command, timeout))


def run_json_process(command: list[str], timeout: float) -> dict[str, Any]:
    """A fresh process's last stdout line as JSON, or ``{"error": its last stderr line}`` when it failed (every
    probe of this package prints its result so)."""
    import json
    import subprocess

    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    out: dict[str, Any] = json.loads(lines[-1])
    return out


def probe_backend(
    bundle_path: str, precision: str, *, backend: str = "onnxruntime", threads: int | None = None,
    batches: Sequence[int] = (1,),
) -> dict[str, Any]:  # fmt: skip
    """Cold start (backend load + first batch-1 run) and peak RSS after each batch size, ascending, as a
    :class:`Probe`'s fields. Run it alone in a fresh process (:func:`run_probe`) so the memory is this backend's.
    """
    from edgetl_runtime.bundle.reader import Bundle

    bundle = Bundle.open(bundle_path)
    chosen = bundle.resolve_precision(precision)
    height, width = bundle.manifest.preprocess.input_size
    rng = np.random.default_rng(0)
    baseline = current_rss_mb()  # interpreter + numpy + onnxruntime + the bundle's bytes
    start = time.perf_counter()
    runner = open_backend(bundle, backend, chosen, threads)
    runner.run(rng.standard_normal((1, 3, height, width), dtype=np.float32))
    cold_ms = (time.perf_counter() - start) * 1e3
    peaks = {}
    for batch in sorted(batches):
        runner.run(rng.standard_normal((batch, 3, height, width), dtype=np.float32))
        peaks[str(batch)] = process_peak_rss_mb()
    return {"cold_start_ms": cold_ms, "baseline_rss_mb": baseline, "peak_rss_mb": peaks}


def _main(argv: Sequence[str] | None = None) -> None:
    import argparse
    import json

    from edgetl_runtime.cli_args import add_backend_argument, add_precision_argument, add_threads_argument, comma_list

    parser = argparse.ArgumentParser(description="Probe one backend's cold start and peak RSS; prints JSON.")
    parser.add_argument("bundle")
    add_backend_argument(parser, TIMED_BACKENDS)
    add_precision_argument(parser, default="fp32")
    add_threads_argument(parser)
    parser.add_argument("--batches", type=comma_list(int), default="1", help="comma list, e.g. 1,8,32")
    args = parser.parse_args(argv)
    result = probe_backend(
        args.bundle, args.precision, backend=args.backend, threads=args.threads, batches=args.batches
    )
    print(json.dumps(result))


if __name__ == "__main__":
    _main()
