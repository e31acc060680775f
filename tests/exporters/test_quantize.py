"""int8 / fp16 quantization: config validation, input checks, and a small end-to-end quality check.

The end-to-end tests quantize EfficientNet-Lite0 (bundled ImageNet weights) at 64x64 with 32
Fashion-MNIST calibration images, so they run in seconds yet exercise the real graph (TF padding,
ReLU6, depthwise convolutions).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from edgetl_exporters.quantization import Fp16Config, QuantDType, QuantizeConfig
from edgetl_exporters.quantization.config import cpu_has_vnni
from edgetl_exporters.quantization.core import quantize_int8
from edgetl_exporters.quantization.fp16 import convert_fp16
from edgetl_exporters.quantization.guard import quantize_guarded
from edgetl_runtime.errors import ConfigError, InputError, QuantizationError

pytestmark = pytest.mark.exporters

FMNIST = Path("/usr/share/datasets/fashion-mnist")
SIZE = 64


def _fmnist(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(FMNIST / f"{split}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FMNIST / f"{split}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images[:n], labels[:n].astype(np.int64)


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    pytest.importorskip("torch")
    from edgetl.backbones import create_backbone
    from edgetl_exporters.onnx_export import export_features_onnx

    bb = create_backbone("tf_efficientnet_lite0", weights="bundled", image_size=SIZE)
    path = tmp_path_factory.mktemp("q") / "lite0.fp32.onnx"
    inputs = np.random.default_rng(0).normal(size=(4, 3, SIZE, SIZE)).astype(np.float32)
    export_features_onnx(bb.model, inputs, path)
    return path, bb.spec


@pytest.fixture(scope="module")
def data(lite0: tuple[Path, object]) -> dict[str, np.ndarray]:
    if not FMNIST.is_dir():
        pytest.skip("Fashion-MNIST is not installed under /usr/share/datasets")
    from edgetl_runtime.preprocess import preprocess_batch

    _, spec = lite0
    calib, _ = _fmnist("train", 32)
    test, labels = _fmnist("t10k", 100)
    return {
        "calib": preprocess_batch(list(calib), spec),  # (32, 3, 64, 64)
        "eval": preprocess_batch(list(test), spec),  # (100, 3, 64, 64)
        "labels": labels,
    }


# ----- config ------------------------------------------------------------------------------------


def test_config_converts_strings_and_serialises() -> None:
    cfg = QuantizeConfig(activation_type="UINT8", weight_type="int8", calibrate_method="percentile", op_types=["Conv"])
    assert cfg.activation_type is QuantDType.QUINT8 and cfg.op_types == ("Conv",)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["calibrate_method"] == "percentile" and cfg.extra_options()["CalibPercentile"] == 99.999
    assert QuantizeConfig.from_dict(data) == cfg


def test_config_collects_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        QuantizeConfig(activation_type="int4", percentile=42.0, num_calibration=0, op_types=("Conv", "Softmax"))
    message = str(info.value)
    for fragment in ("activation_type 'int4'", "percentile", "num_calibration", "Softmax"):
        assert fragment in message
    with pytest.raises(ConfigError, match="activation int8 with weight uint8"):
        QuantizeConfig(activation_type="int8", weight_type="uint8")


def test_ort_kwargs_pin_every_argument() -> None:
    pytest.importorskip("onnxruntime")
    import inspect

    from onnxruntime.quantization import QuantType, quantize_static

    kwargs = QuantizeConfig.x86_avx2().ort_kwargs()
    io_args = {"model_input", "model_output", "calibration_data_reader", "calibration_cache_path"}
    assert set(inspect.signature(quantize_static).parameters) - io_args == set(kwargs)
    assert kwargs["per_channel"] is True and kwargs["reduce_range"] is True
    assert kwargs["activation_type"] == QuantType.QUInt8 and kwargs["weight_type"] == QuantType.QInt8


def test_presets(tmp_path: Path) -> None:
    trt = QuantizeConfig.tensorrt()
    assert trt.activation_symmetric and trt.weight_symmetric and trt.activation_type is QuantDType.QINT8
    assert QuantizeConfig.x86_vnni().reduce_range is False and QuantizeConfig.x86_avx2().reduce_range is True
    assert QuantizeConfig.arm(per_channel=False).per_channel is False
    vnni = tmp_path / "vnni"
    vnni.write_text("processor: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    plain = tmp_path / "plain"
    plain.write_text("flags\t\t: fpu sse2 avx2\n")
    assert cpu_has_vnni(vnni) and not cpu_has_vnni(plain) and not cpu_has_vnni(tmp_path / "missing")
    if not __import__("platform").machine().lower().startswith(("arm", "aarch")):
        assert QuantizeConfig.auto(vnni).reduce_range is False
        assert QuantizeConfig.auto(plain).reduce_range is True


# ----- input errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: np.zeros((0, 3, SIZE, SIZE), np.float32), "empty"),
        (lambda: np.zeros((4, 3, SIZE + 1, SIZE), np.float32), "axis 2"),
        (lambda: np.zeros((4, 3, SIZE), np.float32), "shape"),
        (lambda: np.full((4, 3, SIZE, SIZE), np.nan, np.float32), "NaN/Inf"),
        (lambda: np.zeros((4, 3, SIZE, SIZE), np.float64), "float32"),
        (lambda: [[0.0]], "numpy array"),
    ],
)
def test_bad_calibration_raises_and_writes_nothing(lite0, tmp_path: Path, make, fragment: str) -> None:
    out = tmp_path / "int8.onnx"
    with pytest.raises(InputError, match=fragment):
        quantize_int8(lite0[0], out, make())
    assert list(tmp_path.iterdir()) == []


def test_unknown_excluded_node_is_a_config_error(lite0, data, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no_such_node"):
        quantize_int8(
            lite0[0], tmp_path / "int8.onnx", data["calib"][:4], QuantizeConfig(nodes_to_exclude=["no_such_node"])
        )
    assert list(tmp_path.iterdir()) == []


# ----- end to end --------------------------------------------------------------------------------


def test_int8_is_small_and_faithful(lite0, data, tmp_path: Path) -> None:
    from edgetl_exporters.quantization.measure import run_features
    from edgetl_runtime.numerics import row_cosine

    out = tmp_path / "int8.onnx"
    report = quantize_int8(lite0[0], out, data["calib"], source="fashion-mnist train[:32]")
    assert report.calibration_count == 32 and report.calibration_source == "fashion-mnist train[:32]"
    assert report.size_ratio < 0.30 and report.int8_bytes == out.stat().st_size
    fp32 = run_features(lite0[0], data["eval"][:64])
    int8 = run_features(out, data["eval"][:64])
    assert int8.shape == fp32.shape == (64, 1280)
    cosine = row_cosine(fp32, int8)
    mean, low = cosine.mean(), cosine.min()
    # A collapsed quantization (per-tensor depthwise, saturation) lands far below these.
    assert mean > 0.90 and low > 0.6, (mean, low)
    assert json.loads(json.dumps(report.to_dict()))["size_ratio"] == pytest.approx(report.size_ratio)


def test_tensorrt_preset_emits_only_what_tensorrt_parses(lite0, data, tmp_path: Path) -> None:
    """TensorRT's ONNX parser takes int8 (or narrower) DequantizeLinear with zero point 0: no uint8
    activations, no int32 biases. The x86 default has both, which is why the runtime checks the manifest."""
    import onnx
    from onnx import TensorProto

    def qdq_types(path: Path) -> tuple[set[int], set[int]]:
        """Element types of every quantized initializer and zero point; types of the nonzero zero points."""
        graph = onnx.load(str(path)).graph
        inits = {i.name: i for i in graph.initializer}
        qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        stored = {n.input[0] for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in inits}
        zero_points = {n.input[2] for n in qdq if len(n.input) > 2 and n.input[2] in inits}
        nonzero = {z for z in zero_points if onnx.numpy_helper.to_array(inits[z]).any()}
        return {inits[t].data_type for t in stored | zero_points}, {inits[z].data_type for z in nonzero}

    trt = tmp_path / "trt.onnx"
    report = quantize_int8(lite0[0], trt, data["calib"][:8], QuantizeConfig.tensorrt(num_calibration=8))
    types, nonzero = qdq_types(trt)
    assert types == {TensorProto.INT8} and not nonzero, (types, nonzero)
    assert report.ort_arguments["extra_options"]["QuantizeBias"] is False
    assert report.ort_arguments["activation_type"] == "QInt8" and report.config["quantize_bias"] is False

    x86 = tmp_path / "x86.onnx"
    quantize_int8(lite0[0], x86, data["calib"][:8], QuantizeConfig.x86_avx2(num_calibration=8))
    types, _ = qdq_types(x86)
    assert TensorProto.INT32 in types and TensorProto.UINT8 in types  # the CPU-fused form


def test_report_records_the_exact_arguments(lite0, data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest must let anyone replay the call: the keywords quantize_static really got, stride included."""
    from onnxruntime import quantization

    from edgetl_exporters.quantization.core import describe_arguments

    real, seen = quantization.quantize_static, []

    def recording(model_input: str, model_output: str, reader: object, **kwargs: object) -> None:
        seen.append({k: v for k, v in kwargs.items() if k != "calibration_cache_path"})
        real(model_input, model_output, reader, **kwargs)

    monkeypatch.setattr(quantization, "quantize_static", recording)
    config = QuantizeConfig(calibrate_method="percentile", num_calibration=32, calibration_batch_size=4)
    report = quantize_int8(lite0[0], tmp_path / "p.onnx", data["calib"], config)
    assert len(seen) == 1 and report.ort_arguments == describe_arguments(seen[0])
    args = json.loads(json.dumps(report.ort_arguments))
    assert args["calibrate_method"] == "Percentile" and args["quant_format"] == "QDQ"
    assert args["extra_options"]["CalibStridedMinMax"] == 8  # 8 batches of 4, folded 32 images at a time
    assert set(args["extra_options"]) >= {"QuantizeBias", "SmoothQuant", "TensorQuantOverrides", "MinimumRealRange"}


def test_guard_passes_without_exclusions_when_loose(lite0, data, tmp_path: Path) -> None:
    out = tmp_path / "int8.onnx"
    report = quantize_guarded(
        lite0[0], out, data["calib"], data["eval"], data["labels"], max_drop=50.0, shots=2, episodes=3, latency_runs=3
    )
    assert out.exists() and report.excluded_nodes == [] and len(report.attempts) == 1
    assert report.config["nodes_to_exclude"] == [] and report.ort_arguments["nodes_to_exclude"] == []
    assert report.accuracy_fp32 > 30.0 and report.accuracy_delta == pytest.approx(-report.attempts[0]["drop"])
    guard = report.guard
    assert guard["passed"] and guard["episodes"] == 3 and guard["images"] == len(data["eval"])
    low, high = guard["interval"]
    assert low <= guard["drop"] <= high and "auto" in guard["kind"]
    assert report.latency_int8_ms and report.latency_int8_ms > 0


def test_guard_excludes_sensitive_nodes_then_refuses(lite0, data, tmp_path: Path) -> None:
    """Unlabelled, int8 features can never agree with fp32 at cosine 1.0: exclusions grow, then it raises."""
    out = tmp_path / "int8.onnx"
    with pytest.raises(QuantizationError, match=r"min_cosine=1\.0") as info:
        quantize_guarded(
            lite0[0], out, data["calib"], data["eval"], None, min_cosine=1.0, max_excluded=2, latency_runs=0
        )
    report = info.value.report  # type: ignore[attr-defined]
    sizes = [len(a["excluded_nodes"]) for a in report.attempts]
    assert len(sizes) == 3 and sizes[0] == 0 and sizes[0] < sizes[1] < sizes[2], sizes
    assert set(report.attempts[1]["excluded_nodes"]) < set(report.attempts[2]["excluded_nodes"])
    assert any("Conv" in n for n in report.attempts[1]["excluded_nodes"])
    assert not report.guard["passed"] and "feature agreement" in report.guard["kind"]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unlabelled_guard_ships_int8_judged_by_feature_agreement(lite0, data, tmp_path: Path) -> None:
    report = quantize_guarded(lite0[0], tmp_path / "u.onnx", data["calib"], data["eval"], None, latency_runs=0)
    assert report.guard["passed"] and report.accuracy_delta is None and report.excluded_nodes == []
    low, high = report.guard["interval"]
    assert 0.9 <= low <= report.guard["cosine_mean"] <= high <= 1.0


def test_guard_rejects_bad_eval_data(lite0, data, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="shots"):
        quantize_guarded(lite0[0], tmp_path / "i.onnx", data["calib"], data["eval"][:12], data["labels"][:12], shots=5)
    with pytest.raises(ConfigError, match="episodes"):
        quantize_guarded(lite0[0], tmp_path / "i.onnx", data["calib"], data["eval"], data["labels"], episodes=1)
    with pytest.raises(ConfigError, match="max_drop"):
        quantize_guarded(
            lite0[0], tmp_path / "i.onnx", data["calib"], data["eval"], data["labels"], max_drop=float("nan")
        )


def test_fp16_keeps_float32_io(lite0, data, tmp_path: Path) -> None:
    out = tmp_path / "fp16.onnx"
    report = convert_fp16(lite0[0], out, check_images=data["eval"][:8])
    assert report["cosine_min"] > 0.999 and report["fp16_bytes"] < 0.6 * report["fp32_bytes"]
    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)" and session.get_outputs()[0].type == "tensor(float)"
    with pytest.raises(QuantizationError, match="fp16 features drift"):
        convert_fp16(lite0[0], tmp_path / "strict.onnx", data["eval"][:4], config=Fp16Config(1.0, max_kept=1))
    assert not (tmp_path / "strict.onnx").exists()


def test_guard_ranks_nodes_by_the_error_they_add(tmp_path: Path) -> None:
    """The stem that cuts the SQNR against fp32 from 40 to 20 dB outranks a later node that adds 2 dB,
    even though the later node's own output is noisier in absolute terms."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgetl_exporters.quantization.guard import rank_sensitive_nodes

    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w1")
    w2 = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w2")
    lo, hi = (
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
    )
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="stem"),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["a1"], name="stem_act"),
        helper.make_node("Conv", ["a1", "w2"], ["c2"], name="late"),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["y"], name="late_act"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        [w, w2, lo, hi],
    )
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph), str(path))
    ranked = rank_sensitive_nodes(path, {"x": 40.0, "a1": 20.0, "y": 18.0}, QuantizeConfig())
    assert ranked == [["stem", "stem_act"], ["late", "late_act"]]


def test_one_entry_builds_int8_and_fp16_and_names_what_it_takes(lite0, data, tmp_path: Path) -> None:
    from edgetl_exporters import export_features_onnx, quantize, write_bundle  # the package's face

    assert callable(export_features_onnx) and callable(write_bundle)
    config = QuantizeConfig.portable(num_calibration=8)
    int8 = quantize(lite0[0], tmp_path / "i.onnx", "int8", data["calib"][:8], config=config, source="s")
    assert int8["calibration_source"] == "s" and int8["size_ratio"] < 0.35 and not int8["guard"]  # unguarded
    fp16 = quantize(lite0[0], tmp_path / "h.onnx", "fp16", data["eval"][:4])
    assert fp16["cosine_min"] >= Fp16Config().min_cosine and (tmp_path / "h.onnx").is_file()
    for precision, images, bad in (("fp32", None, None), ("int8", None, None), ("fp16", None, config)):
        with pytest.raises(ConfigError):
            quantize(lite0[0], tmp_path / "x.onnx", precision, images, config=bad)
    assert not (tmp_path / "x.onnx").exists()
