"""Latency bench reports: JSON (everything), CSV (one row per cell), PNG, a terminal table, and the environment."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.measure.latency import environment

if TYPE_CHECKING:
    from edgetl.bench.latency_config import LatencyBenchConfig, LatencyBenchResult, LatencyCell

HOST_DISTRIBUTIONS = ("numpy", "onnxruntime", "onnxruntime-gpu", "torch", "timm", "onnx", "tensorrt", "edgetl")
MEMORY_METHOD = (
    "peak RSS (VmHWM) of a fresh process that imports only that backend, loads the model at the largest "
    "thread count and runs one batch of each size in ascending order; baseline_rss_mb is its RSS before loading"
)
COLD_START_METHOD = "in that fresh process: backend load (session creation / model build + weights) + first batch-1 run"


def latency_environment(
    bundle: Bundle, config: LatencyBenchConfig, load_start: tuple[float, float, float], wall_seconds: float
) -> dict[str, Any]:
    """CPU, ISA flags, library versions, providers, threads and the int8 format: what the numbers depend on."""
    import torch

    return {
        **environment(HOST_DISTRIBUTIONS),
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


def write_reports(result: LatencyBenchResult, output_dir: Path) -> dict[str, Path]:
    """``latency_<model>_<size>.{json,csv,png}`` under ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = output_dir / f"latency_{result.model}_{result.image_size}"
    paths = {"json": stem.with_suffix(".json"), "csv": stem.with_suffix(".csv"), "png": stem.with_suffix(".png")}
    paths["json"].write_text(json.dumps(result.to_dict(), indent=2, default=str))
    with paths["csv"].open("w", newline="") as fh:
        rows = [c.to_dict() for c in result.cells]
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["backend"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plot(result, paths["png"])
    return paths


def plot(result: LatencyBenchResult, path: Path) -> None:
    """p50 latency per call with p90/p99 whiskers, and % of the GEMM peak, per configuration and batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(c.label for c in result.cells))
    batches = sorted({c.batch for c in result.cells})
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, 1.6 * len(batches) * len(labels) ** 0.5 + 4), 9))
    width = 0.8 / max(len(labels), 1)
    for i, label in enumerate(labels):
        cells = {c.batch: c for c in result.cells if c.label == label}
        xs = [b + (i - (len(labels) - 1) / 2) * width for b in range(len(batches))]
        rows = [cells.get(b) for b in batches]
        p50 = [r.stats.p50_ms if r else 0.0 for r in rows]
        upper = [[0.0 for _ in rows], [(r.stats.p99_ms - r.stats.p50_ms) if r else 0.0 for r in rows]]
        top.bar(xs, p50, width, label=label, yerr=upper, capsize=3)
        top.scatter(xs, [r.stats.p90_ms if r else 0.0 for r in rows], marker="_", color="black", zorder=3)
        bottom.bar(xs, [(r.pct_of_peak or 0.0) if r else 0.0 for r in rows], width, label=label)
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
    return header, [_row(c) for c in sorted(result.cells, key=lambda c: (c.batch, c.threads or 0, c.backend,
                                                                             c.precision))]  # fmt: skip


def _row(c: LatencyCell) -> list[str]:
    s = c.stats
    return [
        c.backend, c.precision, str(c.batch), "-" if c.threads is None else str(c.threads), str(s.runs),
        *(f"{v:.2f}" for v in (s.p50_ms, s.p90_ms, s.p99_ms, s.mean_ms)), f"{s.throughput:.1f}", f"{c.gflops:.1f}",
        _fmt(c.pct_of_peak, ".1f"), _fmt(c.probe.peak_rss_mb.get(str(c.batch)), ".0f"),
        _fmt(c.probe.cold_start_ms, ".0f"), f"{c.model_bytes / 1e6:.1f}",
    ]  # fmt: skip


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
