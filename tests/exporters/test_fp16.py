"""fp16 keeps in fp32 what fp16 cannot carry (issue 16, item 5): out-of-range tensors and damaging nodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgetl_exporters.quantization.fp16 import Fp16Config, convert_fp16
from edgetl_exporters.quantization.measure import run_features
from edgetl_runtime.errors import ConfigError, QuantizationError
from edgetl_runtime.numerics import row_cosine

pytestmark = pytest.mark.exporters
onnx = pytest.importorskip("onnx")


def _model(nodes: list, initializers: dict[str, np.ndarray], path: Path) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 3])],
        initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _pointwise(scale: np.ndarray) -> np.ndarray:
    return np.diag(scale).reshape(3, 3, 1, 1)


def _images(n: int = 16) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 3, 8, 8)).astype(np.float32)


def test_a_tensor_beyond_fp16_range_stays_fp32(tmp_path: Path) -> None:
    """x * 4e4 overflows fp16 (max 65504) for |x| > 1.6; the old converter made inf and NaN features."""
    from onnx import helper

    nodes = [
        helper.make_node("Conv", ["images", "up"], ["big"], name="up"),
        helper.make_node("Conv", ["big", "down"], ["small"], name="down"),
        helper.make_node("GlobalAveragePool", ["small"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["features"], name="flat"),
    ]
    inits = {"up": _pointwise(np.full(3, 4e4)), "down": _pointwise(np.full(3, 2.5e-5))}
    path = _model(nodes, inits, tmp_path / "m.onnx")
    images = _images()
    report = convert_fp16(path, tmp_path / "fp16.onnx", images)
    assert {"up", "down"} <= set(report["kept_in_fp32"])
    assert report["cosine_min"] >= 0.995
    got = run_features(tmp_path / "fp16.onnx", images)
    assert np.isfinite(got).all() and row_cosine(run_features(path, images), got).min() >= 0.995


def test_catastrophic_cancellation_is_found_and_kept_fp32(tmp_path: Path) -> None:
    """(3000 x) - (2999 x): each product rounds by ~1 in fp16, the difference x is lost; fp32 keeps it."""
    from onnx import helper

    nodes = [
        helper.make_node("Conv", ["images", "a"], ["ya"], name="conv_a"),
        helper.make_node("Conv", ["images", "b"], ["yb"], name="conv_b"),
        helper.make_node("Sub", ["ya", "yb"], ["d"], name="sub"),
        helper.make_node("Relu", ["d"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["features"], name="flat"),
    ]
    inits = {"a": _pointwise(np.full(3, 3000.0)), "b": _pointwise(np.full(3, 2999.0))}
    path = _model(nodes, inits, tmp_path / "m.onnx")
    images = _images()
    with pytest.raises(QuantizationError, match=r"--fp16-min-cosine.*--fp16-keep-ops"):
        convert_fp16(path, tmp_path / "plain.onnx", images, Fp16Config(auto_keep=False))
    assert not (tmp_path / "plain.onnx").exists()
    report = convert_fp16(path, tmp_path / "fp16.onnx", images)
    assert report["cosine_min"] >= 0.995 and report["kept_in_fp32"]
    assert set(report["kept_in_fp32"]) <= {"conv_a", "conv_b", "sub"}  # the cancelling nodes, nothing else
    assert report["attempts"][0]["cosine_min"] < 0.995  # the plain conversion failed first


def test_keep_ops_and_min_cosine_are_honoured(tmp_path: Path) -> None:
    from onnx import helper

    nodes = [
        helper.make_node("Conv", ["images", "w"], ["c"], name="conv"),
        helper.make_node("GlobalAveragePool", ["c"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["features"], name="flat"),
    ]
    path = _model(nodes, {"w": _pointwise(np.ones(3))}, tmp_path / "m.onnx")
    report = convert_fp16(path, tmp_path / "fp16.onnx", _images(), Fp16Config(keep_ops=("Conv",)))
    assert "Conv" in report["arguments"]["op_block_list"]
    with pytest.raises(ConfigError, match="min_cosine"):
        Fp16Config(min_cosine=1.5)
