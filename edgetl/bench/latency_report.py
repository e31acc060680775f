"""Latency bench reports: JSON (everything), CSV (one row per cell), PNG, and the environment they ran in."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl_runtime.bundle import Bundle
from edgetl_runtime.latency import cpu_info

if TYPE_CHECKING:
    from edgetl.bench.latency_config import LatencyBenchConfig, LatencyBenchResult

DISTRIBUTIONS = ("numpy", "onnxruntime", "onnxruntime-gpu", "torch", "timm", "onnx", "tensorrt", "edgetl")
CSV_COLUMNS = (
    "backend", "precision", "batch", "threads", "warmup", "runs", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms",
    "ms_per_image", "throughput_per_s", "gflops", "peak_gflops", "pct_of_peak", "model_bytes", "cold_start_ms",
    "peak_rss_mb", "baseline_rss_mb", "golden_min_cosine", "golden_passed", "probe_error",
)  # fmt: skip
MEMORY_METHOD = (
    "peak RSS (VmHWM) of a fresh process that imports only that backend, loads the model at the largest "
    "thread count and runs one batch of each size in ascending order; baseline_rss_mb is its RSS before loading"
)
COLD_START_METHOD = "in that fresh process: backend load (session creation / model build + weights) + first batch-1 run"


def environment(
    bundle: Bundle, config: LatencyBenchConfig, load_start: tuple[float, float, float], wall_seconds: float
) -> dict[str, Any]:
    """CPU, ISA flags, library versions, providers, threads and the int8 format: what the numbers depend on."""
    import torch

    return {
        **host_environment(),
        "threads": list(config.threads),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "probe_threads": max(config.threads),
        "load_average_start": list(load_start),  # 1/5/15-min: what else ran on the machine meanwhile
        "load_average_end": list(os.getloadavg()),
        "wall_seconds": wall_seconds,
        "precisions_in_bundle": [p.value for p in bundle.manifest.precisions],
        "int8_quantization": bundle.manifest.quantization or None,
        "bundle": {"path": str(bundle.path), "weights": bundle.manifest.backbone.weights},
        "memory_method": MEMORY_METHOD if config.probe else "not measured (probe=False)",
        "cold_start_method": COLD_START_METHOD if config.probe else "not measured (probe=False)",
        "timing_method": "configurations sharing a thread count interleaved in chunks of 10 timed calls, "
        "one untimed call after each switch; percentiles over per-call wall time (perf_counter)",
    }


def host_environment(distributions: tuple[str, ...] = DISTRIBUTIONS) -> dict[str, Any]:
    """CPU (model, ISA flags, VNNI), platform and library versions: what every measurement here depends on."""
    import onnxruntime

    return {
        "cpu": cpu_info(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in distributions if _version(name)},
        "onnxruntime_providers": onnxruntime.get_available_providers(),
    }


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def write_reports(result: LatencyBenchResult, output_dir: Path) -> dict[str, Path]:
    """``latency_<model>_<size>.{json,csv,png}`` under ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = output_dir / f"latency_{result.model}_{result.image_size}"
    paths = {"json": stem.with_suffix(".json"), "csv": stem.with_suffix(".csv"), "png": stem.with_suffix(".png")}
    paths["json"].write_text(json.dumps(result.to_dict(), indent=2, default=str))
    with paths["csv"].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result.cells)
    plot(result, paths["png"])
    return paths


def _label(cell: dict[str, Any]) -> str:
    threads = "" if cell["threads"] is None else f" t{cell['threads']}"
    return f"{cell['backend']} {cell['precision']}{threads}"


def plot(result: LatencyBenchResult, path: Path) -> None:
    """p50 latency per call with p90/p99 whiskers, and % of the GEMM peak, per configuration and batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(_label(c) for c in result.cells))
    batches = sorted({c["batch"] for c in result.cells})
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, 1.6 * len(batches) * len(labels) ** 0.5 + 4), 9))
    width = 0.8 / max(len(labels), 1)
    for i, label in enumerate(labels):
        cells = {c["batch"]: c for c in result.cells if _label(c) == label}
        xs = [b + (i - (len(labels) - 1) / 2) * width for b in range(len(batches))]
        rows = [cells.get(b) for b in batches]
        p50 = [r["p50_ms"] if r else 0.0 for r in rows]
        upper = [[0.0 for _ in rows], [(r["p99_ms"] - r["p50_ms"]) if r else 0.0 for r in rows]]
        top.bar(xs, p50, width, label=label, yerr=upper, capsize=3)
        top.scatter(xs, [r["p90_ms"] if r else 0.0 for r in rows], marker="_", color="black", zorder=3)
        bottom.bar(xs, [(r["pct_of_peak"] or 0.0) if r else 0.0 for r in rows], width, label=label)
    for ax in (top, bottom):
        ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
        ax.grid(axis="y", alpha=0.3)
    top.set_yscale("log")
    top.set_ylabel("ms per call (bar p50, tick p90, whisker p99)")
    bottom.set_ylabel("% of measured GEMM peak (same dtype, threads)")
    cpu = result.environment.get("cpu", {}).get("model", "?")
    top.set_title(f"{result.model} @ {result.image_size}px — {cpu}, {result.flops.per_image / 1e6:,.0f} MFLOP/image")
    top.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(result: LatencyBenchResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows for a terminal table of the cells."""
    header = ["backend", "prec", "batch", "thr", "runs", "p50 ms", "p90 ms", "p99 ms", "mean ms", "img/s",
              "GFLOP/s", "% peak", "RSS MB", "cold ms", "size MB"]  # fmt: skip
    rows = []
    for c in sorted(result.cells, key=lambda c: (c["batch"], c["threads"] or 0, c["backend"], c["precision"])):
        rows.append([
            c["backend"], c["precision"], str(c["batch"]), "-" if c["threads"] is None else str(c["threads"]),
            str(c["runs"]), *(f"{c[k]:.2f}" for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")),
            f"{c['throughput_per_s']:.1f}", f"{c['gflops']:.1f}", _fmt(c["pct_of_peak"], ".1f"),
            _fmt(c["peak_rss_mb"], ".0f"), _fmt(c["cold_start_ms"], ".0f"), f"{c['model_bytes'] / 1e6:.1f}",
        ])  # fmt: skip
    return header, rows


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
