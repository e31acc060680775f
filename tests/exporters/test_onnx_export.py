"""ONNX export of every registered backbone, with parity validation that can actually fail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgetl.backbones import available_backbones, create_backbone
from edgetl_exporters.onnx_export import ExportConfig, export_features_onnx, validate_parity
from edgetl_runtime.backends.onnxruntime import make_session
from edgetl_runtime.errors import ConfigError, ExportError, InputError, ParityError
from edgetl_runtime.numerics import row_cosine

pytestmark = pytest.mark.exporters


def _inputs(size: int, n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("name", available_backbones())
def test_every_backbone_exports_with_dynamic_batch(name: str, tmp_path: Path) -> None:
    backbone = create_backbone(name, weights="none", image_size=32)
    out = tmp_path / "m.onnx"
    report = export_features_onnx(backbone.model, _inputs(32), out)
    assert report.samples == 3 and report.threshold == ExportConfig().min_cosine
    session = make_session(str(out))
    for batch in (1, 5):  # other batch sizes than the traced one, checked against torch independently of the report
        images = _inputs(32, batch)
        (features,) = session.run(["features"], {"images": images})
        with torch.no_grad():
            reference = backbone.model.eval()(torch.from_numpy(images)).numpy()
        assert features.shape == (batch, backbone.feature_dim)
        assert row_cosine(features, reference).min() > 0.9999


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_bundled_lite_parity_on_real_images(name: str, tmp_path: Path) -> None:
    """Real weights (not random ones) through ONNX agree with torch; 64 px keeps Lite1/2 cheap."""
    from edgetl.datasets import load_fashion_mnist
    from edgetl_runtime.preprocess import preprocess_batch

    backbone = create_backbone(name, weights="bundled", image_size=64)
    images = preprocess_batch(list(load_fashion_mnist("test").images[:8]), backbone.spec)
    report = export_features_onnx(backbone.model, images, tmp_path / f"{name}.onnx")
    assert report.min_cosine > 0.99999 and report.max_abs_diff < 1e-3


def test_parity_failure_names_every_mismatch_in_one_line() -> None:
    backbone = create_backbone("mobilenetv3_small", weights="none", image_size=32)
    path_inputs = _inputs(32, 4)
    import io

    buffer = io.BytesIO()
    torch.onnx.export(
        backbone.model,
        (torch.from_numpy(path_inputs[:1]),),
        buffer,
        dynamo=False,
        opset_version=17,
        input_names=["images"],
        output_names=["features"],
        dynamic_axes={"images": {0: "b"}},
    )
    with torch.no_grad():
        reference = backbone.model(torch.from_numpy(path_inputs)).numpy()
    validate_parity(buffer.getvalue(), path_inputs, reference)  # the honest reference passes
    wrong = reference.copy()
    wrong[[1, 3]] = -wrong[[1, 3]]
    with pytest.raises(ParityError, match=r"2 of \d+ inputs below .*; inputs 1, 3\)\.$"):
        validate_parity(buffer.getvalue(), path_inputs, wrong)


def test_classifier_output_is_refused_and_nothing_written(tmp_path: Path) -> None:
    feature_map = torch.nn.Conv2d(3, 4, 3)  # returns (N, C, H, W), not (N, D)
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match=r"must\s+return \(N, D\)"):
        export_features_onnx(feature_map, _inputs(16), out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "inputs", [np.zeros((0, 3, 8, 8), np.float32), np.zeros((2, 8, 8), np.float32), np.full((1, 3, 8, 8), np.nan)]
)
def test_bad_export_inputs(inputs: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(InputError):
        export_features_onnx(torch.nn.Flatten(), inputs, tmp_path / "x.onnx")


def test_export_config_validation() -> None:
    with pytest.raises(ConfigError, match=r"(?s)opset.*min_cosine"):
        ExportConfig(opset=11, min_cosine=2.0)


def test_parity_catches_tf_same_padding_at_an_odd_size(tmp_path: Path) -> None:
    """timm's TF-'same' padding traces wrongly at 56 px (not a multiple of 32): the export must refuse."""
    backbone = create_backbone("tf_efficientnet_lite0", weights="none")  # create_backbone refuses image_size=56
    with pytest.raises(ParityError, match="divisible by the network stride"):
        export_features_onnx(backbone.model, _inputs(56, 2), tmp_path / "odd.onnx")
    assert not (tmp_path / "odd.onnx").exists()
