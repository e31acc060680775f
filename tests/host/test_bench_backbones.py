"""``edgetl bench backbones``: export the candidates on the user's folder, then the device's own comparison."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgetl.bench.backbones import BackboneBenchConfig
from edgetl.cli import main
from edgetl_runtime.errors import ConfigError, UnknownBackboneError

pytestmark = pytest.mark.host


def _photos(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, colour in {"red": (220, 30, 30), "blue": (30, 40, 220)}.items():
        (root / name).mkdir(parents=True)
        for i in range(6):
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_bench_backbones_exports_and_compares_with_the_runtime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One real backbone (bundled Lite0 at 32 px, fp32 only) keeps it to seconds; the comparison is the runtime's."""
    data, out = _photos(tmp_path / "photos"), tmp_path / "cmp"
    argv = ["bench", "backbones", "--data", str(data), "-o", str(out), "--backbones", "tf_efficientnet_lite0"]
    argv += ["--sizes", "32", "--export-precisions", "fp32", "--splits", "2", "--runs", "10", "--max-seconds", "0.1"]
    assert main([*argv, "--no-probe", "--budget-ms", "1000", "--shots", "1,3"]) == 0
    stdout = capsys.readouterr().out
    assert (out / "bundles" / "lite0_32.edgetl").is_file() and "edgetl-device compare" in stdout
    results = json.loads((out / "results.json").read_text())
    (option,) = results["options"]
    assert option["name"] == "lite0_32:fp32" and option["backbone"] == "tf_efficientnet_lite0"
    assert option["input_size"] == 32 and set(option["accuracy"]) == {"K=1", "K=3", "all-but-one"}
    assert results["recommendation"]["choice"] == "lite0_32:fp32"
    assert "exports" in stdout and (out / "report.md").is_file()


def test_bench_backbones_config_refuses_bad_candidates_before_exporting() -> None:
    with pytest.raises(ConfigError, match="multiple of 32"):
        BackboneBenchConfig(sizes=(100,))
    with pytest.raises(UnknownBackboneError):
        BackboneBenchConfig(backbones=("tf_efficientnet_lite9",))
