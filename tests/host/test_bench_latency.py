"""``edgetl bench latency`` on a tiny model: files, cells, environment, ordered percentiles, FLOPs, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from edgetl.backbones import create_backbone
from edgetl.bench.latency_config import LatencyBenchConfig, LatencyBenchResult
from edgetl.bench.latency_table import probe, run_latency_bench
from edgetl.bench.roofline import achieved_gflops, count_flops, peak_for
from edgetl.datasets import ImageDataset
from edgetl.export import BundleConfig, export_bundle
from edgetl_runtime.errors import ConfigError

pytestmark = pytest.mark.host
SIZE = 32


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A random-init MobileNetV3-Small fp32 bundle at 32 px, calibrated on synthetic images (fast, offline)."""
    rng = np.random.default_rng(0)
    data = ImageDataset(list(rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)), np.arange(40) % 2, ["a", "b"])
    backbone = create_backbone("mobilenetv3_small_100", "none", image_size=SIZE)
    path = tmp_path_factory.mktemp("bench") / "tiny.edgetl"
    config = BundleConfig(precisions=("fp32",), calibration_count=8, eval_count=8)
    export_bundle(backbone, path, data=data, data_source="synthetic", config=config)
    return path, backbone


@pytest.fixture(scope="module")
def result(tiny_bundle: tuple[Path, object], tmp_path_factory: pytest.TempPathFactory) -> LatencyBenchResult:
    path, backbone = tiny_bundle
    config = LatencyBenchConfig(
        backends=("torch", "onnxruntime", "tensorrt"),
        precisions=("fp32", "int8"),
        batch_sizes=(1, 2),
        threads=(1,),
        runs=20,
        warmup=2,
        max_seconds=0.5,
        peak_seconds=0.1,
        output_dir=tmp_path_factory.mktemp("out"),
        probe=False,  # the fresh-process probe is tested on its own below (a torch import costs seconds)
    )
    return run_latency_bench(path, config, torch_model=backbone)


def test_reports_exist_and_hold_every_cell(result: LatencyBenchResult) -> None:
    files = result.files
    assert {k: v.name for k, v in files.items()} == {
        "json": f"latency_mobilenetv3_small_100_{SIZE}.json",
        "csv": f"latency_mobilenetv3_small_100_{SIZE}.csv",
        "png": f"latency_mobilenetv3_small_100_{SIZE}.png",
    }
    assert files["png"].read_bytes().startswith(b"\x89PNG")
    data = json.loads(files["json"].read_text())
    cells = {(c["backend"], c["precision"], c["batch"], c["threads"]) for c in data["cells"]}
    assert cells == {(b, "fp32", n, 1) for b in ("torch", "onnxruntime") for n in (1, 2)}
    with files["csv"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and {"p50_ms", "p99_ms", "pct_of_peak", "model_bytes", "warmup"} <= set(rows[0])


def test_cells_are_ordered_and_complete(result: LatencyBenchResult) -> None:
    for cell in result.cells:
        s = cell.stats
        assert 0 < s.min_ms <= s.p50_ms <= s.p90_ms <= s.p99_ms
        assert 10 <= s.runs <= 20 and 1 <= s.warmup <= 2
        assert s.throughput == pytest.approx(cell.batch / (s.p50_ms / 1e3))
        assert cell.gflops == pytest.approx(achieved_gflops(result.flops.per_image, cell.batch, s.p50_ms))
        assert cell.pct_of_peak is not None and cell.pct_of_peak > 0
        assert cell.model_bytes > 100_000
        assert cell.to_dict()["ms_per_image"] == pytest.approx(s.p50_ms / cell.batch)
    ort = next(c for c in result.cells if c.backend == "onnxruntime")
    assert ort.golden_passed is True and ort.golden_min_cosine is not None and ort.golden_min_cosine > 0.999


def test_environment_and_skips_are_recorded(result: LatencyBenchResult) -> None:
    env = json.loads(result.files["json"].read_text())["environment"]
    assert {"model", "isa", "vnni"} <= set(env["cpu"])
    assert {"numpy", "onnxruntime", "torch", "timm"} <= set(env["versions"])
    assert "CPUExecutionProvider" in env["onnxruntime_providers"]
    assert env["threads"] == [1] and "int8_quantization" in env
    skipped = {(s.backend, s.precision): s.reason for s in result.skipped}
    assert "ships ['fp32'] only" in skipped[("onnxruntime", "int8")]
    if ("tensorrt", "fp32") in skipped:
        assert "tensorrt" in skipped[("tensorrt", "fp32")] or "GPU" in skipped[("tensorrt", "fp32")]
    sources = {row.source: row for row in result.preprocess}
    assert set(sources) == {"gray_28x28", "rgb_480x640"}
    assert all(row.target == (SIZE, SIZE) and row.stats.p50_ms > 0 for row in sources.values())
    assert {p.dtype for p in result.peaks} == {"fp32", "int8"}
    assert peak_for(result.peaks, "int8", 1).dtype == "int8"


def test_fresh_process_probe_reports_cold_start_and_memory(tiny_bundle: tuple[Path, object], tmp_path: Path) -> None:
    config = LatencyBenchConfig(batch_sizes=(1, 4), threads=(1,), output_dir=tmp_path)
    out = probe(tiny_bundle[0], ("onnxruntime", "fp32"), config, SIZE)
    assert out.error is None, out
    assert out.cold_start_ms is not None and out.cold_start_ms > 0
    assert out.baseline_rss_mb is not None and 0 < out.baseline_rss_mb < out.peak_rss_mb["1"] <= out.peak_rss_mb["4"]
    assert out.peak_rss_mb["4"] < 800  # a fresh onnxruntime process, not the torch-laden parent


def test_conv_flops_match_hand_count() -> None:
    # 3->8 channels, 3x3, stride 2 on 32x32 -> 16x16 outputs; 2 FLOPs per multiply-add.
    assert count_flops(nn.Conv2d(3, 8, 3, stride=2, padding=1), 32).per_image == 2 * 8 * 16 * 16 * 3 * 3 * 3
    depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)  # one 3x3 filter per channel
    assert count_flops(depthwise, 16, channels=8).per_image == 2 * 8 * 16 * 16 * 3 * 3
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    assert count_flops(linear, 4, batch=2).per_image == 2 * 48 * 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backends": ("torch", "cuda-magic")}, "unknown backend 'cuda-magic'"),
        ({"batch_sizes": (1, 0)}, "batch sizes must be >= 1"),
        ({"threads": ()}, "threads must not be empty"),
        ({"runs": 5}, "runs must be >= 10"),
        ({"max_seconds": 0}, "max_seconds and peak_seconds must be > 0"),
        ({"precisions": ("fp64",)}, "Unknown precision 'fp64'"),
        ({"image_size": 4}, "image_size must be >= 8"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LatencyBenchConfig(**kwargs)


def test_config_reports_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        LatencyBenchConfig(runs=1, warmup=-1, threads=(0,))
    assert all(part in str(info.value) for part in ("runs", "warmup", "thread counts"))


def test_image_size_must_match_the_bundle(tiny_bundle: tuple[Path, object], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exported at 32"):
        run_latency_bench(tiny_bundle[0], LatencyBenchConfig(image_size=64, output_dir=tmp_path))
