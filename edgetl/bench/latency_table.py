"""Latency of one bundle across backends, precisions, batch sizes and thread counts, measured honestly.

Every configuration is timed in this process, interleaved in chunks (the machine is shared, so drift
hits all of them alike); cold start and peak RSS come from a fresh subprocess per backend and precision,
so the memory is attributable to that backend alone (DESIGN §4.8).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.bench.latency_config import MIN_RUNS, LatencyBenchConfig, LatencyBenchResult
from edgetl.bench.roofline import FlopCount, PeakEstimate, achieved_gflops, count_flops, measure_peaks, peak_for
from edgetl_runtime.bundle import Bundle
from edgetl_runtime.errors import ConfigError, EdgeTLError
from edgetl_runtime.latency import LatencyStats, measure, summarize
from edgetl_runtime.manifest import Precision
from edgetl_runtime.preprocess import PreprocessSpec, preprocess_batch

ORT_PROVIDERS = {
    "onnxruntime": "CPUExecutionProvider",
    "onnxruntime-cuda": "CUDAExecutionProvider",
    "onnxruntime-tensorrt": "TensorrtExecutionProvider",
}
CHUNK = 10  # timed calls per configuration before switching to the next one
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
    golden: Any = None  # the GoldenReport of a bundle backend; None for torch, the reference itself

    @property
    def key(self) -> tuple[str, str]:
        return (self.backend, self.precision)


def run_latency_bench(
    bundle: str | Path, config: LatencyBenchConfig | None = None, torch_model: Any = None
) -> LatencyBenchResult:
    """Measure ``bundle`` (and ``torch_model``, the eager reference) as ``config`` says; write the reports.

    ``torch_model`` is a :class:`edgetl.backbones.Backbone`; by default one is built from the manifest.
    """
    import torch

    from edgetl.bench.report import environment, write_reports

    torch_threads = torch.get_num_threads()

    config, start, load_start = config or LatencyBenchConfig(), time.perf_counter(), os.getloadavg()
    opened = Bundle.open(bundle)
    size = _image_size(opened, config)
    torch_model = torch_model or backbone_for(opened, size)
    built, skipped = build_runners(opened, config, torch_model)
    flops = count_flops(torch_model.model, size)
    peaks = measure_peaks(config.threads, config.peak_seconds)
    keys = dict.fromkeys(r.key for r in built)
    probes = {key: probe(Path(bundle), key, config, size) if config.probe else {} for key in keys}
    stats = _measure_all(built, config, size)
    torch.set_num_threads(torch_threads)  # the torch runners changed it; leave the process as we found it
    cells = [_cell(r, s, b, probes[r.key], flops, peaks) for (r, b), s in stats.items()]
    prep = time_preprocessing(opened.manifest.preprocess, config)
    env = environment(opened, config, load_start, wall_seconds=time.perf_counter() - start)
    result = LatencyBenchResult(opened.manifest.backbone.name, size, config, env, flops, peaks, cells, prep, skipped)
    result.files = write_reports(result, config.output_dir)
    return result


def _image_size(bundle: Bundle, config: LatencyBenchConfig) -> int:
    height, width = bundle.manifest.preprocess.input_size
    if height != width:
        raise ConfigError(f"The latency bench expects a square input; the bundle's is {height}x{width}.")
    if config.image_size is not None and config.image_size != height:
        raise ConfigError(
            f"image_size={config.image_size} but the bundle was exported at {height}; re-export the bundle at "
            f"{config.image_size} (edgetl export --image-size {config.image_size}) or drop image_size."
        )
    return height


def _measure_all(
    runners: list[Runner], config: LatencyBenchConfig, size: int
) -> dict[tuple[Runner, int], LatencyStats]:
    """Time every runner at every batch size; runners sharing a thread count are interleaved."""
    out: dict[tuple[Runner, int], LatencyStats] = {}
    rng = np.random.default_rng(0)
    for batch in config.batch_sizes:
        images = rng.standard_normal((batch, 3, size, size), dtype=np.float32)  # (B, 3, S, S)
        for threads in dict.fromkeys(r.threads for r in runners):
            group = [r for r in runners if r.threads == threads]
            out.update({(r, batch): s for r, s in zip(group, _interleaved(group, images, config), strict=True)})
    return out


def _interleaved(group: list[Runner], images: np.ndarray, config: LatencyBenchConfig) -> list[LatencyStats]:
    """Warm each runner up, then time them in round-robin chunks of ``CHUNK`` calls until each is done.

    Each chunk starts with one untimed call: switching backends leaves cold caches and sleeping (or still
    spinning) thread pools, which belong to the switch, not to the backend.
    """
    inputs = [r.to_input(images) for r in group]
    warm = [_warm_up(r, x, config) for r, x in zip(group, inputs, strict=True)]
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
                spent = sum(times[i])
                if len(times[i]) >= config.runs or (len(times[i]) >= MIN_RUNS and spent > config.max_seconds):
                    active.remove(i)
                    break
    return [summarize(t, warmup=w, items_per_call=len(images)) for t, w in zip(times, warm, strict=True)]


def _warm_up(runner: Runner, inputs: Any, config: LatencyBenchConfig) -> int:
    """Up to ``config.warmup`` untimed calls, stopping after a quarter of ``max_seconds``; returns the count."""
    runner.prepare()
    start, count = time.perf_counter(), 0
    while count < config.warmup and (count == 0 or time.perf_counter() - start < config.max_seconds / 4):
        runner.call(inputs)
        count += 1
    return count


def _cell(
    runner: Runner, stats: LatencyStats, batch: int, probe: dict[str, Any], flops: FlopCount, peaks: list[PeakEstimate]
) -> dict[str, Any]:
    gflops = achieved_gflops(flops.per_image, batch, stats.p50_ms)
    peak = peak_for(peaks, runner.precision, runner.threads)
    return {
        "backend": runner.backend,
        "precision": runner.precision,
        "batch": batch,
        "threads": runner.threads,
        **stats.to_dict(),
        "ms_per_image": stats.p50_ms / batch,
        "gflops": gflops,
        "peak_gflops": peak.gflops if peak else None,
        "pct_of_peak": 100.0 * gflops / peak.gflops if peak else None,
        "model_bytes": runner.model_bytes,
        "cold_start_ms": probe.get("cold_start_ms"),
        "peak_rss_mb": probe.get("peak_rss_mb", {}).get(str(batch)),
        "baseline_rss_mb": probe.get("baseline_rss_mb"),
        "golden_min_cosine": runner.golden.min_cosine if runner.golden else None,
        "golden_passed": runner.golden.passed if runner.golden else None,
        "probe_error": probe.get("error"),
    }


def time_preprocessing(spec: PreprocessSpec, config: LatencyBenchConfig) -> list[dict[str, Any]]:
    """numpy ``preprocess_batch`` per image, apart from the model: a 28x28 gray and a 480x640 RGB source."""
    rng = np.random.default_rng(0)
    rows = []
    for name, shape in PREPROCESS_SOURCES.items():
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        stats = measure(lambda im=image: preprocess_batch([im], spec), runs=config.runs, warmup=3,
                        max_seconds=config.max_seconds / 2)  # fmt: skip
        rows.append({"source": name, "source_shape": list(shape), "target": list(spec.input_size), **stats.to_dict()})
    return rows


def run_probe_subprocess(command: list[str], timeout: float = 600.0) -> dict[str, Any]:
    """Run a probe command in a fresh interpreter and parse the JSON it prints on its last line."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return dict(json.loads(lines[-1]))


def torch_probe_main() -> None:
    """``python -c`` entry of the torch probe: cold start (build + first call) and peak RSS per batch."""
    import torch

    from edgetl.backbones import create_backbone
    from edgetl_runtime.latency import current_rss_mb, process_peak_rss_mb

    timm_name, weights, size, threads, batches = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    torch.set_num_threads(int(threads))
    baseline = current_rss_mb()
    start = time.perf_counter()
    model = create_backbone(timm_name, weights, image_size=size).model.eval()
    peaks = {}
    with torch.inference_mode():
        model(torch.randn(1, 3, size, size))
        cold_ms = (time.perf_counter() - start) * 1e3
        for batch in sorted(int(b) for b in batches.split(",")):
            model(torch.randn(batch, 3, size, size))
            peaks[str(batch)] = process_peak_rss_mb()
    print(json.dumps({"cold_start_ms": cold_ms, "baseline_rss_mb": baseline, "peak_rss_mb": peaks}))


def backbone_for(bundle: Bundle, size: int) -> Any:
    """The eager torch model of the bundle's architecture (bundled weights when the manifest used them)."""
    from edgetl.backbones import create_backbone

    return create_backbone(bundle.manifest.backbone.timm_name, _weights(bundle), image_size=size)


def _weights(bundle: Bundle) -> str:
    weights = bundle.manifest.backbone.weights
    return weights if weights in {"bundled", "none"} else "none"  # latency does not depend on weight values


def build_runners(
    bundle: Bundle, config: LatencyBenchConfig, torch_model: Any
) -> tuple[list[Runner], list[dict[str, str]]]:
    """Load every requested backend x precision x thread count that exists here; say why the rest cannot run."""
    runners: list[Runner] = []
    skipped: list[dict[str, str]] = []
    for backend in config.backends:
        precisions = [Precision.FP32] if backend == "torch" else config.precisions
        for precision in precisions:
            reason = _unavailable(bundle, backend, precision)
            if reason:
                skipped.append({"backend": backend, "precision": precision.value, "reason": reason})
                continue
            try:
                runners += _load(bundle, backend, precision, config, torch_model)
            except EdgeTLError as exc:
                skipped.append({"backend": backend, "precision": precision.value, "reason": str(exc)})
    return runners, skipped


def _unavailable(bundle: Bundle, backend: str, precision: Precision) -> str | None:
    """Why ``backend`` at ``precision`` cannot run here, or ``None`` when it can."""
    if backend != "torch" and precision not in bundle.manifest.precisions:
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


def _load(
    bundle: Bundle, backend: str, precision: Precision, config: LatencyBenchConfig, torch_model: Any
) -> list[Runner]:
    from edgetl_runtime.backends import create_backend
    from edgetl_runtime.backends.onnxruntime import OrtBackend

    if backend == "torch":
        return [_torch_runner(torch_model, t) for t in config.threads]
    if backend == "tensorrt":
        return [_bundle_runner(bundle, create_backend(bundle, "tensorrt", precision, verify=False), backend, None)]
    threads = config.threads if backend == "onnxruntime" else (None,)  # GPU providers: host threads do not matter
    providers = [ORT_PROVIDERS[backend]]
    return [
        _bundle_runner(bundle, OrtBackend.from_bundle(bundle, precision, threads=t, providers=providers), backend, t)
        for t in threads
    ]


def _bundle_runner(bundle: Bundle, built: Any, backend: str, threads: int | None) -> Runner:
    """Wrap a loaded backend with its golden check: a fast wrong answer must show next to its latency."""
    from edgetl_runtime.backends import check_against_golden

    report = check_against_golden(built, bundle)
    size = len(bundle.model_bytes(built.precision))
    return Runner(backend, built.precision.value, threads, built.run, lambda x: x, size, lambda: None, report)


def _torch_runner(backbone: Any, threads: int) -> Runner:
    """Eager torch on the CPU: eval mode, no autograd, ``threads`` intra-op threads."""
    import torch

    model = backbone.model.eval()

    def call(x: Any) -> object:
        with torch.inference_mode():
            return model(x)

    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return Runner("torch", "fp32", threads, call, torch.from_numpy, size, lambda: torch.set_num_threads(threads))


def probe(bundle_path: Path, key: tuple[str, str], config: LatencyBenchConfig, size: int) -> dict[str, Any]:
    """Cold start and peak RSS of one backend x precision, in a fresh interpreter at the largest thread count."""
    backend, precision = key
    threads, batches = str(max(config.threads)), ",".join(str(b) for b in sorted(config.batch_sizes))
    if backend == "torch":
        opened = Bundle.open(bundle_path)
        code = "from edgetl.bench.latency import torch_probe_main; torch_probe_main()"
        args = [opened.manifest.backbone.timm_name, _weights(opened), str(size), threads, batches]
        return run_probe_subprocess([sys.executable, "-c", code, *args])
    command = [sys.executable, "-m", "edgetl_runtime.latency", str(bundle_path), "--precision", precision]
    command += ["--threads", threads, "--batches", batches]
    command += ["--backend", "tensorrt"] if backend == "tensorrt" else ["--provider", ORT_PROVIDERS[backend]]
    return run_probe_subprocess(command)
