"""int8 calibrated from a folder of unlabelled images: accepted, and judged by feature agreement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.cli import main
from edgetl.datasets import load_fashion_mnist
from edgetl_runtime.bundle.reader import Bundle

pytestmark = pytest.mark.host


def test_unlabelled_png_folder_calibrates_int8_with_a_feature_agreement_guard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    images = load_fashion_mnist("train").images[:120]
    for i, image in enumerate(images):  # no class folders: just pictures from the device's world
        Image.fromarray(np.asarray(image)).save(folder / f"{i:03d}.png")
    out = tmp_path / "u.edgetl"
    argv = ["export", "tf_efficientnet_lite0", "--weights", "bundled", "--image-size", "64", "--calib", str(folder)]
    assert main([*argv, "--calib-count", "60", "--eval-count", "60", "-o", str(out)]) == 0
    manifest = Bundle.open(out).manifest
    guard = manifest.quantization["guard"]
    assert "feature agreement" in guard["kind"] and "accuracy not measured" in guard["kind"]
    assert guard["passed"] and guard["images"] == 60 and guard["interval"][0] <= guard["cosine_mean"]
    assert manifest.calibration["count"] == 60 and manifest.quantization["targets"] == ["x86-avx2", "x86-vnni", "arm64"]
    printed = capsys.readouterr().out
    assert "int8 guard  passed: mean cosine" in printed and "int8 for    x86-avx2, x86-vnni, arm64" in printed
