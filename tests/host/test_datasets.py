"""Datasets refuse to train silently on nothing: every bad input names the problem and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.cli import main
from edgetl.datasets import (
    FASHION_MNIST_SHA256,
    _idx_sha256,
    fashion_mnist_dir,
    from_arrays,
    k_shot,
    load_fashion_mnist,
    load_image_folder,
    stack_images,
    stratified_split,
)
from edgetl_runtime.errors import DatasetError, InputError

pytestmark = pytest.mark.host


def _folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (20, 24)) -> Path:
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_image_folder_loads_classes_in_order(tmp_path: Path) -> None:
    data = load_image_folder(_folder(tmp_path, {"cat": 3, "dog": 2}))
    assert data.classes == ["cat", "dog"] and list(data.class_counts()) == [3, 2]
    assert data.images[0].shape == (20, 24, 3) and data.images[0].dtype == np.uint8


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="No images found"):
        load_image_folder(tmp_path / "empty")
    with pytest.raises(DatasetError, match="at least 2 classes"):
        load_image_folder(_folder(tmp_path / "one", {"only": 3}))
    broken = _folder(tmp_path / "broken", {"a": 2, "b": 2})
    (broken / "a" / "bad.png").write_bytes(b"not a png")
    (broken / "b" / "worse.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"(?s)2 unreadable.*bad\.png.*worse\.jpg"):
        load_image_folder(broken)
    hollow = _folder(tmp_path / "hollow", {"a": 2, "b": 2})
    (hollow / "c").mkdir()
    with pytest.raises(DatasetError, match=r"\['c'\] .* hold no images"):
        load_image_folder(hollow)


def test_k_shot_and_splits() -> None:
    data = load_fashion_mnist("test")
    support, rest = k_shot(data, 3, seed=1)
    assert list(support.class_counts()) == [3] * 10 and len(rest) == len(data) - 30
    assert k_shot(data, 3, seed=1)[0].labels.tolist() == support.labels.tolist()  # reproducible
    small = data.subset(np.flatnonzero(data.labels < 2)[:5])
    with pytest.raises(DatasetError, match="larger than the number of images"):
        k_shot(small, 4)
    with pytest.raises(InputError):
        k_shot(data, 0)
    a, b = stratified_split(data, [0.8, 0.2])
    assert len(a) + len(b) == len(data) and set(np.unique(b.labels)) == set(range(10))
    with pytest.raises(InputError):
        stratified_split(data, [0.8, 0.5])


def test_arrays_mixed_sizes_and_bad_dtypes() -> None:
    same = from_arrays(np.zeros((4, 8, 8), np.uint8), [0, 1, 0, 1])
    assert same.classes == ["0", "1"]
    ragged = [np.zeros((8, 8), np.uint8), np.zeros((9, 8), np.uint8)]
    assert len(from_arrays(ragged, [0, 1])) == 2  # a list of mixed sizes is fine: each image is resized
    with pytest.raises(InputError, match="mixed sizes"):
        stack_images(ragged)
    with pytest.raises(InputError, match="dtype float32"):
        from_arrays(np.zeros((2, 8, 8), np.float32), [0, 1])
    with pytest.raises(InputError, match="match one to one"):
        from_arrays(np.zeros((2, 8, 8), np.uint8), [0])


def test_fashion_mnist_is_the_verified_dataset() -> None:
    folder = fashion_mnist_dir()
    assert folder is not None
    name = "t10k-labels-idx1-ubyte.gz"
    assert _idx_sha256(folder / name) == FASHION_MNIST_SHA256[name]


def test_cli_export_and_inspect_on_an_image_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _folder(tmp_path / "data", {"a": 8, "b": 8}, size=(40, 40))
    bundle = tmp_path / "m.edgetl"
    args = ["export", "mobilenetv3_small", "--weights", "none", "--precision", "fp32", "--image-size", "32"]
    assert main([*args, "--calib", str(data), "--calib-count", "4", "--eval-count", "4", "-o", str(bundle)]) == 0
    assert main(["inspect", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "every member verified" in out and "backbone.fp32.onnx" in out
    assert main(["export", "mobilenetv3_small", "--precision", "int4", "-o", str(tmp_path / "x.edgetl")]) == 2
    assert "Unknown precision" in capsys.readouterr().err
    assert not (tmp_path / "x.edgetl").exists()
