"""Latency of one bundle across backends, precisions, batch sizes and thread counts, measured honestly.

Every configuration is timed in this process, interleaved in chunks (the machine is shared, so drift
hits all of them alike); cold start and peak RSS come from a fresh subprocess per backend and precision,
so the memory is attributable to that backend alone (DESIGN §4.8).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.bench.latency_config import LatencyBenchConfig, LatencyBenchResult, LatencyCell
from edgetl.bench.roofline import achieved_gflops, count_flops, measure_peaks, peak_for
from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.errors import ConfigError, EdgeTLError
from edgetl_runtime.measure.latency import LatencyStats, Probe, backend_unavailable, run_probe
from edgetl_runtime.measure.timing import Runner, Skipped, bundle_runners, time_preprocessing, time_round_robin


def run_latency_bench(
    bundle: str | Path, config: LatencyBenchConfig | None = None, torch_model: Any = None
) -> LatencyBenchResult:
    """Measure ``bundle`` (and ``torch_model``, the eager reference) as ``config`` says; write the reports.

    ``torch_model`` is a :class:`edgetl.backbones.Backbone`; by default one is built from the manifest.
    """
    import torch

    from edgetl.bench.latency_report import latency_environment, write_reports

    torch_threads = torch.get_num_threads()
    config, start, load_start = config or LatencyBenchConfig(), time.perf_counter(), os.getloadavg()
    opened = Bundle.open(bundle)
    shipped = opened.manifest.precisions
    if not any(p in shipped for p in config.precisions):  # nothing to time: an empty table would look like a result
        raise ConfigError(
            f"{bundle} ships {', '.join(p.value for p in shipped)}, none of the requested precisions "
            f"{', '.join(p.value for p in config.precisions)}. Fix: pass --precisions "
            f"{','.join(p.value for p in shipped)}, or export the bundle with them (edgetl export --precision ...)."
        )
    size = _image_size(opened, config)
    torch_model = torch_model or backbone_for(opened, size)
    built, skipped = build_runners(opened, config, torch_model)
    flops = count_flops(torch_model.model, size)
    peaks = measure_peaks(config.threads, config.peak_seconds)
    keys = dict.fromkeys(r.key for r in built)
    probes = {key: probe(Path(bundle), key, config, size) if config.probe else Probe() for key in keys}
    stats = _measure_all(built, config, size)
    torch.set_num_threads(torch_threads)  # the torch runners changed it; leave the process as we found it
    cells = []
    for (runner, batch), stat in stats.items():
        peak, golden = peak_for(peaks, runner.precision, runner.threads), runner.golden
        gflops = achieved_gflops(flops.per_image, batch, stat.p50_ms)
        cells.append(LatencyCell(runner.backend, runner.precision, batch, runner.threads, stat, gflops,
                                 peak.gflops if peak else None, runner.model_bytes, probes[runner.key],
                                 golden.min_cosine if golden else None, golden.passed if golden else None))  # fmt: skip
    prep = time_preprocessing(opened.manifest.preprocess, config.budget)
    env = latency_environment(opened, config, load_start, wall_seconds=time.perf_counter() - start)
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
            stats = time_round_robin(group, images, config.budget)
            out.update({(r, batch): s for r, s in zip(group, stats, strict=True)})
    return out


def backbone_for(bundle: Bundle, size: int) -> Any:
    """The eager torch model of the bundle's architecture (bundled weights when the manifest used them)."""
    from edgetl.backbones import create_backbone

    return create_backbone(bundle.manifest.backbone.timm_name, _weights(bundle), image_size=size)


def _weights(bundle: Bundle) -> str:
    weights = bundle.manifest.backbone.weights
    return weights if weights in {"bundled", "none"} else "none"  # latency does not depend on weight values


def build_runners(bundle: Bundle, config: LatencyBenchConfig, torch_model: Any) -> tuple[list[Runner], list[Skipped]]:
    """Load every requested backend x precision x thread count that exists here; say why the rest cannot run."""
    runners: list[Runner] = []
    skipped: list[Skipped] = []
    for backend in config.backends:
        if backend == "torch":
            runners += [_torch_runner(torch_model, t) for t in config.threads]
            continue
        for precision in config.precisions:
            try:
                reason = backend_unavailable(bundle, backend, precision)
                if reason is None:
                    runners += bundle_runners(bundle, backend, precision, config.threads)
            except EdgeTLError as exc:
                reason = str(exc)
            if reason is not None:
                skipped.append(Skipped(backend, precision.value, reason))
    return runners, skipped


def _torch_runner(backbone: Any, threads: int) -> Runner:
    """Eager torch on the CPU: eval mode, no autograd, ``threads`` intra-op threads."""
    import torch

    model = backbone.model.eval()

    def call(x: Any) -> object:
        with torch.inference_mode():
            return model(x)

    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return Runner("torch", "fp32", threads, call, torch.from_numpy, size, lambda: torch.set_num_threads(threads))


def probe(bundle_path: Path, key: tuple[str, str], config: LatencyBenchConfig, size: int) -> Probe:
    """Cold start and peak RSS of one backend x precision, in a fresh interpreter at the largest thread count."""
    backend, precision = key
    threads, batches = str(max(config.threads)), ",".join(str(b) for b in sorted(config.batch_sizes))
    if backend == "torch":
        opened = Bundle.open(bundle_path)
        code = "from edgetl.bench.latency_table import torch_probe_main; torch_probe_main()"
        args = [opened.manifest.backbone.timm_name, _weights(opened), str(size), threads, batches]
        return run_probe([sys.executable, "-c", code, *args])
    command = [sys.executable, "-m", "edgetl_runtime.measure.latency", str(bundle_path), "--precision", precision]
    return run_probe([*command, "--threads", threads, "--batches", batches, "--backend", backend])


def torch_probe_main() -> None:
    """``python -c`` entry of the torch probe: cold start (build + first call) and peak RSS per batch."""
    import torch

    from edgetl.backbones import create_backbone
    from edgetl_runtime.measure.latency import current_rss_mb, process_peak_rss_mb

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
