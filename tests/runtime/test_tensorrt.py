"""TensorRT backend: pure tests (cache key, config, lazy imports, caching logic) run anywhere;
engine tests run only where an NVIDIA GPU, tensorrt and cuda-python are present."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import edgetl_runtime._optional as optional
import edgetl_runtime.backends.tensorrt as trt_mod
from edgetl_runtime._optional import is_available
from edgetl_runtime.backends import check_against_golden, create_backend
from edgetl_runtime.backends.int8_targets import int8_problem
from edgetl_runtime.backends.tensorrt import (
    EngineBuildConfig,
    TensorRTBackend,
    build_engine,
    engine_cache_key,
    gpu_available,
    load_or_build_engine,
    profile_shapes,
)
from edgetl_runtime.bundle.manifest import BackboneInfo, Manifest, Precision
from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.errors import (
    BackendError,
    BundleError,
    ConfigError,
    EdgeTLError,
    InputError,
    OptionalDependencyError,
)
from edgetl_runtime.preprocess import PreprocessSpec

pytestmark = [pytest.mark.runtime]
needs_gpu = pytest.mark.skipif(
    not (gpu_available() and is_available("tensorrt")),
    reason="needs an NVIDIA GPU with tensorrt and cuda-python installed",
)

DIM, SIZE = 8, 16
ALL = (Precision.FP32, Precision.FP16, Precision.INT8)


# ------------------------------------------------------------------ a tiny bundle with real fp16 and Q/DQ int8 models


def _tiny_models(seed: int = 0) -> dict[Precision, bytes]:
    """images (N,3,H,W) -> Conv1x1 -> Relu -> GlobalAveragePool -> Flatten -> features (N, DIM), three ways:
    fp32; fp16 weights between Casts (fp32 I/O); symmetric int8 Q/DQ (per-channel weights), as TensorRT wants."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w, b = _weights(seed)
    f16 = TensorProto.FLOAT16

    def tail(src: str, out: str = "features") -> list[Any]:
        return [helper.make_node("Relu", [src], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
                helper.make_node("Flatten", ["p"], [out], axis=1)]  # fmt: skip

    def model(nodes: list[Any], inits: dict[str, Any]) -> bytes:
        graph = helper.make_graph(
            nodes, "tiny",
            [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
            [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", DIM])],
            initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
        )  # fmt: skip
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        proto.ir_version = 8
        onnx.checker.check_model(proto)
        return bytes(proto.SerializeToString())

    w_scale = (np.abs(w).max(axis=(1, 2, 3)) / 127).astype(np.float32)
    w_q = np.clip(np.round(w / w_scale[:, None, None, None]), -127, 127).astype(np.int8)
    return {
        Precision.FP32: model([helper.make_node("Conv", ["images", "w", "b"], ["c"]), *tail("c")], {"w": w, "b": b}),
        Precision.FP16: model(
            [
                helper.make_node("Cast", ["images"], ["x16"], to=f16),
                helper.make_node("Conv", ["x16", "w", "b"], ["c"]),
                *tail("c", "f16"),
                helper.make_node("Cast", ["f16"], ["features"], to=TensorProto.FLOAT),
            ],
            {"w": w.astype(np.float16), "b": b.astype(np.float16)},
        ),
        Precision.INT8: model(
            [
                helper.make_node("QuantizeLinear", ["images", "xs", "xz"], ["xq"]),
                helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
                helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
                helper.make_node("Conv", ["xd", "wd", "b"], ["c"]),
                *tail("c"),
            ],
            {
                "xs": np.float32(2.5 / 127),
                "xz": np.int8(0),
                "wq": w_q,
                "ws": w_scale,
                "wz": np.zeros(DIM, np.int8),
                "b": b,
            },
        ),
    }


def _weights(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(DIM, 3, 1, 1)).astype(np.float32), (0.1 * rng.normal(size=DIM)).astype(np.float32)


def _reference(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """The fp32 model in numpy: (N, 3, H, W) -> (N, DIM)."""
    w, b = _weights(seed)
    conv = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x) + b[None, :, None, None]
    return np.asarray(np.maximum(conv, 0).mean(axis=(2, 3)), dtype=np.float32)


def _images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2, 2, size=(n, 3, SIZE, SIZE)).astype(np.float32)  # (n, 3, H, W)


# What QuantizeConfig.tensorrt() records (the tiny int8 model is built that way: symmetric int8, float bias).
TRT_QUANTIZATION = {
    "quant_format": "qdq",
    "activation_type": "int8",
    "weight_type": "int8",
    "activation_symmetric": True,
    "weight_symmetric": True,
    "quantize_bias": False,
}
# What the x86 CPU default records: uint8 activations with zero points, int32 biases.
CPU_QUANTIZATION = {
    **TRT_QUANTIZATION,
    "activation_type": "uint8",
    "activation_symmetric": False,
    "quantize_bias": True,
}


def _write(path: Path, precisions: tuple[Precision, ...] = ALL, quantization: dict[str, Any] | None = None) -> Bundle:
    writer = pytest.importorskip("edgetl_exporters.bundle_writer")
    models = _tiny_models()
    golden = _images(4)
    members = {p.member: models[p] for p in precisions}
    members["golden.npz"] = writer.npz_bytes({"inputs": golden, "features": _reference(golden)})
    manifest = Manifest(
        backbone=BackboneInfo("tiny", "tiny", "random", DIM),
        preprocess=PreprocessSpec(input_size=(SIZE, SIZE)),
        members={},
        precisions=precisions,
        quantization=dict(quantization if quantization is not None else TRT_QUANTIZATION),
    )
    bundle: Bundle = writer.write_bundle(path, manifest, members)
    return bundle


@pytest.fixture
def trt_bundle(tmp_path: Path) -> Bundle:
    return _write(tmp_path / "tiny-trt.edgetl")


@pytest.fixture
def config(tmp_path: Path) -> EngineBuildConfig:
    return EngineBuildConfig(engine_dir=tmp_path / "engines", timing_cache=tmp_path / "engines" / "timing.cache")


# ------------------------------------------------------------------------------------------------ runs anywhere


def test_importing_the_module_imports_no_heavy_dependency() -> None:
    code = (
        "import sys, edgetl_runtime.backends.tensorrt, edgetl_runtime.backends\n"
        "print([m for m in ('tensorrt', 'cuda', 'torch', 'onnx') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_tiny_models_match_the_reference_under_onnxruntime(trt_bundle: Bundle) -> None:
    """The GPU tests trust these models: prove on CPU that every precision is a faithful copy."""
    pytest.importorskip("onnxruntime")
    for precision in ALL:
        backend = create_backend(trt_bundle, backend="onnxruntime", precision=precision)  # verifies golden
        report = check_against_golden(backend, trt_bundle)
        assert report.passed and report.min_cosine > 0.999, (precision, report)


def test_gpu_available_is_a_bool_and_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(gpu_available(), bool)
    monkeypatch.setattr(trt_mod, "is_available", lambda name: True)

    class FakeCudart:
        def __init__(self, result: tuple[Any, Any]) -> None:
            self.result = result

        def cudaGetDeviceCount(self) -> tuple[Any, Any]:
            return self.result

    for result, expected in [((0, 2), True), ((0, 0), False), ((35, None), False)]:
        monkeypatch.setattr(trt_mod, "_cudart", lambda r=result: FakeCudart(r))
        assert gpu_available() is expected

    def broken() -> Any:
        raise OSError("libcudart.so: cannot open shared object file")

    monkeypatch.setattr(trt_mod, "_cudart", broken)
    assert gpu_available() is False


KEY_ARGS: dict[str, Any] = {
    "onnx_sha256": "a" * 64,
    "trt_version": "10.7.0",
    "gpu_name": "NVIDIA H100 80GB HBM3",
    "compute_capability": "9.0",
    "input_shape": (3, 224, 224),
}


@pytest.mark.parametrize(
    "change",
    [
        {"onnx_sha256": "b" * 64},
        {"trt_version": "10.8.0"},
        {"gpu_name": "Orin (nvgpu)"},
        {"compute_capability": "8.7"},
        {"input_shape": (3, 192, 192)},
        {"config": EngineBuildConfig(precision=Precision.INT8)},
        {"config": EngineBuildConfig(min_batch=2)},
        {"config": EngineBuildConfig(opt_batch=16)},
        {"config": EngineBuildConfig(max_batch=64)},
        {"config": EngineBuildConfig(workspace_bytes=2 << 30)},
        {"config": EngineBuildConfig(builder_optimization_level=5)},
    ],
    ids=lambda c: next(iter(c)) if "config" not in c else "config",
)
def test_cache_key_changes_with_each_component(change: dict[str, Any]) -> None:
    base = engine_cache_key(config=EngineBuildConfig(), **KEY_ARGS)
    changed = engine_cache_key(**{"config": EngineBuildConfig(), **KEY_ARGS, **change})
    assert len(base) == 64 and changed != base


def test_cache_key_is_deterministic_and_ignores_cache_locations(tmp_path: Path) -> None:
    base = engine_cache_key(config=EngineBuildConfig(), **KEY_ARGS)
    moved = EngineBuildConfig(engine_dir=tmp_path, timing_cache=None)
    assert engine_cache_key(config=EngineBuildConfig(), **KEY_ARGS) == base
    assert engine_cache_key(config=moved, **KEY_ARGS) == base


def test_config_converts_strings_and_serialises(tmp_path: Path) -> None:
    config = EngineBuildConfig(precision="int8", engine_dir=str(tmp_path), timing_cache=str(tmp_path / "t.cache"))  # type: ignore[arg-type]
    assert config.precision is Precision.INT8 and config.engine_dir == tmp_path
    data = json.loads(json.dumps(config.to_dict()))
    assert data["precision"] == "int8" and data["max_batch"] == 32 and data["timing_cache"] == str(tmp_path / "t.cache")
    assert EngineBuildConfig().to_dict()["workspace_bytes"] == 1 << 30


def test_config_reports_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        EngineBuildConfig(min_batch=0, workspace_bytes=0, builder_optimization_level=9)
    message = str(info.value)
    assert "3 problems" in message and "min_batch" in message and "workspace_bytes" in message and "0..5" in message
    with pytest.raises(ConfigError, match="opt_batch"):
        EngineBuildConfig(opt_batch=64, max_batch=32)
    with pytest.raises(ConfigError, match="Unknown precision 'int4'"):
        EngineBuildConfig(precision="int4")  # type: ignore[arg-type]


def test_profile_shapes() -> None:
    config = EngineBuildConfig(min_batch=1, opt_batch=8, max_batch=32)
    assert profile_shapes((-1, 3, 224, 224), config) == ((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))
    assert profile_shapes((-1, 3, -1, -1), config, (160, 128))[2] == (32, 3, 160, 128)
    assert profile_shapes((4, 3, 64, 64), config) == ((4, 3, 64, 64),) * 3  # static batch stays static
    with pytest.raises(BackendError, match="image_size"):
        profile_shapes((-1, 3, -1, -1), config)
    with pytest.raises(BackendError, match="2-d"):
        profile_shapes((-1, 512), config)


def test_create_backend_without_tensorrt_says_what_to_install(
    trt_bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = optional.is_available
    monkeypatch.setattr(optional, "is_available", lambda name: name != "tensorrt" and real(name))
    with pytest.raises(OptionalDependencyError) as info:
        create_backend(trt_bundle, backend="tensorrt", precision="fp16")
    assert isinstance(info.value, (EdgeTLError, ImportError))
    assert "'tensorrt'" in str(info.value) and "pip install 'edgetl-runtime[tensorrt]'" in str(info.value)


@pytest.mark.skipif(gpu_available(), reason="checks the fallback on machines without a GPU")
def test_auto_falls_back_to_onnxruntime_without_a_gpu(trt_bundle: Bundle) -> None:
    pytest.importorskip("onnxruntime")
    assert create_backend(trt_bundle, backend="auto", precision="fp32").name.startswith("onnxruntime")


@pytest.fixture
def exported_trt_bundle(tmp_path: Path) -> Bundle:
    """The tiny fp32 model quantized by the exporters' ``tensorrt`` preset, bundled as `edgetl export` does."""
    quantization = pytest.importorskip("edgetl_exporters.quantization")
    writer = pytest.importorskip("edgetl_exporters.bundle_writer")
    from edgetl_runtime.backends.onnxruntime import make_session

    fp32 = tmp_path / "fp32.onnx"
    fp32.write_bytes(_tiny_models()[Precision.FP32])
    config = quantization.QuantizeConfig.tensorrt()
    report = quantization.core.quantize_int8(fp32, tmp_path / "int8.onnx", _images(32, seed=5), config)
    int8 = (tmp_path / "int8.onnx").read_bytes()
    golden = _images(4)
    session = make_session(int8)
    host_int8 = session.run(None, {session.get_inputs()[0].name: golden})[0]
    members = {
        Precision.FP32.member: fp32.read_bytes(),
        Precision.INT8.member: int8,
        "golden.npz": writer.npz_bytes({"inputs": golden, "features": _reference(golden), "features_int8": host_int8}),
    }
    manifest = Manifest(
        backbone=BackboneInfo("tiny", "tiny", "random", DIM),
        preprocess=PreprocessSpec(input_size=(SIZE, SIZE)),
        members={},
        precisions=(Precision.FP32, Precision.INT8),
        quantization={**report.config, "ort_arguments": report.ort_arguments},
    )
    bundle: Bundle = writer.write_bundle(tmp_path / "exported.edgetl", manifest, members)
    return bundle


def test_the_exporters_tensorrt_int8_is_ready_and_faithful_on_cpu(exported_trt_bundle: Bundle) -> None:
    assert int8_problem(exported_trt_bundle.manifest) is None
    backend = create_backend(exported_trt_bundle, backend="onnxruntime", precision="int8")  # verifies golden
    assert check_against_golden(backend, exported_trt_bundle).min_cosine_fp32 > 0.99


def test_int8_readiness_is_read_from_the_manifest(tmp_path: Path) -> None:
    assert int8_problem(_write(tmp_path / "trt.edgetl").manifest) is None
    problem = int8_problem(_write(tmp_path / "cpu.edgetl", quantization=CPU_QUANTIZATION).manifest)
    assert problem and "asymmetric" in problem and "int32" in problem and "--quant-preset tensorrt" in problem
    fp32_only = _write(tmp_path / "fp32.edgetl", (Precision.FP32,)).manifest
    assert int8_problem(fp32_only) == "the bundle ships no int8 model"
    qoperator = _write(tmp_path / "qop.edgetl", quantization={**TRT_QUANTIZATION, "quant_format": "qoperator"})
    assert "qoperator" in str(int8_problem(qoperator.manifest))


def test_the_exporters_presets_agree_with_the_runtime_check() -> None:
    quantization = pytest.importorskip("edgetl_exporters.quantization")
    manifest = SimpleNamespace(precisions=ALL, quantization=quantization.QuantizeConfig.tensorrt().to_dict())
    assert int8_problem(manifest) is None  # type: ignore[arg-type]
    for preset in (quantization.QuantizeConfig.x86_avx2(), quantization.QuantizeConfig.arm()):
        manifest.quantization = preset.to_dict()
        assert int8_problem(manifest) is not None  # type: ignore[arg-type]


def test_best_on_tensorrt_skips_an_int8_model_it_cannot_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tensorrt_10 = type("trt", (), {"BuilderFlag": type("F", (), {"FP16": 0})})
    monkeypatch.setattr(trt_mod, "_trt", lambda: tensorrt_10)
    assert trt_mod.tensorrt_precision(_write(tmp_path / "trt.edgetl"), "best") is Precision.INT8
    cpu = _write(tmp_path / "cpu.edgetl", quantization=CPU_QUANTIZATION)
    assert trt_mod.tensorrt_precision(cpu, "best") is Precision.FP16
    no_fp16 = _write(tmp_path / "no16.edgetl", (Precision.FP32, Precision.INT8), CPU_QUANTIZATION)
    assert trt_mod.tensorrt_precision(no_fp16, "best") is Precision.FP16  # TensorRT 10 lowers fp32 itself
    assert trt_mod.tensorrt_precision(no_fp16, "fp16") is Precision.FP16
    with pytest.raises(BackendError, match="--quant-preset tensorrt"):
        trt_mod.tensorrt_precision(cpu, "int8")
    tensorrt_11 = type("trt", (), {"BuilderFlag": type("F", (), {})})  # strongly typed: no FP16 flag
    monkeypatch.setattr(trt_mod, "_trt", lambda: tensorrt_11)
    assert trt_mod.tensorrt_precision(no_fp16, "best") is Precision.FP32
    with pytest.raises(BundleError, match="no fp16"):
        trt_mod.tensorrt_precision(no_fp16, "fp16")
    with pytest.raises(BundleError, match="Unknown precision 'bogus'"):
        trt_mod.tensorrt_precision(cpu, "bogus")


def test_auto_falls_back_to_onnxruntime_when_tensorrt_cannot_build(
    trt_bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    from edgetl_runtime.backends import selection as base

    def refuse(bundle: Bundle, precision: Precision, config: Any = None) -> TensorRTBackend:
        raise BackendError("TensorRT could not parse the ONNX model")

    monkeypatch.setattr(base, "tensorrt_usable", lambda: True)
    monkeypatch.setattr(trt_mod, "_trt", lambda: type("trt", (), {"BuilderFlag": type("F", (), {"FP16": 0})}))
    monkeypatch.setattr(TensorRTBackend, "from_bundle", classmethod(lambda cls, *a, **k: refuse(*a, **k)))
    with pytest.warns(UserWarning, match="using onnxruntime: BackendError: TensorRT could not parse"):
        backend = create_backend(trt_bundle, backend="auto", precision="best", measure=False)
    # The int8 member is in TensorRT's form, which CPUs run slower than fp32: untimed, best keeps fp32.
    assert backend.name.startswith("onnxruntime") and backend.precision is Precision.FP32
    with pytest.raises(BackendError, match="could not parse"):
        create_backend(trt_bundle, backend="tensorrt", precision="best")


def test_best_retries_fp16_when_the_int8_engine_fails_and_auto_survives_any_tensorrt_error(
    trt_bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    from edgetl_runtime.backends import selection as base
    from edgetl_runtime.backends.onnxruntime import OrtBackend

    asked: list[Precision] = []

    def only_fp16(cls: type, bundle: Bundle, precision: Precision, config: Any = None) -> OrtBackend:
        asked.append(precision)
        if precision is Precision.INT8:
            raise BackendError("TensorRT failed to build the int8 engine")
        return OrtBackend.from_bundle(bundle, precision)  # stands in for the engine: same model, same golden

    monkeypatch.setattr(base, "tensorrt_usable", lambda: True)
    monkeypatch.setattr(trt_mod, "_trt", lambda: type("trt", (), {"BuilderFlag": type("F", (), {"FP16": 0})}))
    monkeypatch.setattr(TensorRTBackend, "from_bundle", classmethod(only_fp16))
    with pytest.warns(UserWarning, match="trying TensorRT fp16"):
        backend = create_backend(trt_bundle, backend="tensorrt", precision="best")
    assert asked == [Precision.INT8, Precision.FP16] and backend.precision is Precision.FP16
    with pytest.raises(BackendError):  # int8 asked for by name: no silent change of precision
        create_backend(trt_bundle, backend="tensorrt", precision="int8")

    def read_only(cls: type, *args: Any, **kwargs: Any) -> TensorRTBackend:
        raise OSError(30, "Read-only file system", "/root/.cache/edgetl/engines")

    monkeypatch.setattr(TensorRTBackend, "from_bundle", classmethod(read_only))
    with pytest.warns(UserWarning, match="OSError"):
        assert create_backend(trt_bundle, backend="auto", precision="fp32").name.startswith("onnxruntime")


class FakeBuilder:
    """Stands in for TensorRT: records what it was asked to build."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, EngineBuildConfig, tuple[int, int] | None]] = []

    def __call__(
        self, onnx_bytes: bytes, config: EngineBuildConfig, image_size: tuple[int, int] | None = None
    ) -> bytes:
        self.calls.append((onnx_bytes, config, image_size))
        return f"engine-{config.precision.value}-{len(self.calls)}".encode()


@pytest.fixture
def fake_device(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeBuilder, dict[str, str]]:
    info = {"tensorrt": "10.7.0", "gpu_name": "Fake GPU", "compute_capability": "8.7"}
    builder = FakeBuilder()
    monkeypatch.setattr(trt_mod, "device_info", lambda: dict(info))
    monkeypatch.setattr(trt_mod, "build_engine", builder)
    monkeypatch.setattr(trt_mod, "_trt", lambda: type("trt", (), {"BuilderFlag": type("F", (), {"FP16": 0})}))
    return builder, info


def test_engine_cache_hits_misses_and_rebuilds(
    trt_bundle: Bundle, config: EngineBuildConfig, fake_device: tuple[FakeBuilder, dict[str, str]]
) -> None:
    builder, info = fake_device
    first = load_or_build_engine(trt_bundle, Precision.FP16, config)
    assert load_or_build_engine(trt_bundle, Precision.FP16, config) == first and len(builder.calls) == 1
    onnx_bytes, used, image_size = builder.calls[0]
    assert onnx_bytes == trt_bundle.model_bytes(Precision.FP16) and used.precision is Precision.FP16
    assert image_size == (SIZE, SIZE)
    engines = sorted(p.name for p in config.engine_dir.glob("*.engine"))
    meta = json.loads(next(config.engine_dir.glob("*.json")).read_text())
    assert len(engines) == 1 and engines[0].startswith("tiny-fp16-") and meta["gpu_name"] == "Fake GPU"
    assert not list(config.engine_dir.glob(".*.tmp")), "atomic writes leave no temp files"

    assert load_or_build_engine(trt_bundle, Precision.FP16, config, rebuild=True) != first  # forced rebuild
    load_or_build_engine(trt_bundle, Precision.INT8, config)  # another precision: another engine
    info["gpu_name"] = "Another GPU"  # engines are not portable: a new GPU misses the cache
    load_or_build_engine(trt_bundle, Precision.FP16, config)
    assert len(builder.calls) == 4 and len(list(config.engine_dir.glob("*.engine"))) == 3


def test_fp16_engine_builds_from_fp32_when_the_bundle_ships_no_fp16(
    tmp_path: Path, config: EngineBuildConfig, fake_device: tuple[FakeBuilder, dict[str, str]]
) -> None:
    builder, _ = fake_device
    bundle = _write(tmp_path / "fp32-only.edgetl", (Precision.FP32,))
    load_or_build_engine(bundle, Precision.FP16, config)
    assert builder.calls[0][0] == bundle.model_bytes(Precision.FP32)
    assert builder.calls[0][1].precision is Precision.FP16
    with pytest.raises(BundleError, match="no int8 model"):
        load_or_build_engine(bundle, Precision.INT8, config)


def test_cuda_results_are_unwrapped_or_raised() -> None:
    assert trt_mod._cuda((0, 1234), "cudaMalloc") == 1234
    assert trt_mod._cuda((0,), "cudaFree") is None
    with pytest.raises(BackendError, match="cudaMalloc failed"):
        trt_mod._cuda((2, None), "cudaMalloc")


class FakeCuda:
    """cuda-python's runtime over host memory: "device" buffers are numpy arrays, copies are memmove."""

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    def __init__(self) -> None:
        self.buffers: dict[int, np.ndarray] = {}
        self.freed: list[int] = []

    def cudaStreamCreate(self) -> tuple[int, int]:
        return 0, 7

    def cudaMalloc(self, size: int) -> tuple[int, int]:
        buffer = np.zeros(size, np.uint8)
        self.buffers[buffer.ctypes.data] = buffer
        return 0, buffer.ctypes.data

    def cudaMemcpyAsync(self, dst: int, src: int, count: int, kind: int, stream: int) -> tuple[int]:
        ctypes.memmove(dst, src, count)
        return (0,)

    def cudaStreamSynchronize(self, stream: int) -> tuple[int]:
        return (0,)

    def cudaFree(self, pointer: int) -> tuple[int]:
        self.freed.append(pointer)
        return (0,)

    def cudaStreamDestroy(self, stream: int) -> tuple[int]:
        return (0,)


class FakeEngine:
    """A TensorRT engine and execution context that run :func:`_reference` on the fake device buffers."""

    def __init__(self, batch: int = -1) -> None:
        self.batch, self.shapes, self.addresses, self.runs = batch, {}, {}, 0  # type: ignore[var-annotated]
        self.num_io_tensors = 2

    def get_tensor_name(self, i: int) -> str:
        return ("images", "features")[i]

    def get_tensor_mode(self, name: str) -> str:
        return "input" if name == "images" else "output"

    def get_tensor_dtype(self, name: str) -> type:
        return np.float32

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name == "features":  # as the context reports it, once the input shape is set
            return (self.shapes.get("images", (self.batch,))[0], DIM)
        return (self.batch, 3, SIZE, SIZE)

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        return [(b, 3, SIZE, SIZE) for b in (1, 8, 32)]

    def create_execution_context(self) -> FakeEngine:
        return self

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = tuple(shape)
        return self.batch < 0 or shape[0] == self.batch

    def set_tensor_address(self, name: str, pointer: int) -> None:
        self.addresses[name] = pointer

    def execute_async_v3(self, stream: int) -> bool:
        self.runs += 1
        shape = self.shapes["images"]
        size = int(np.prod(shape)) * 4
        raw = bytes((ctypes.c_char * size).from_address(self.addresses["images"]))
        x = np.frombuffer(raw, np.float32).reshape(shape)
        out = _reference(x)
        ctypes.memmove(self.addresses["features"], out.ctypes.data, out.nbytes)
        return True


FAKE_TRT = SimpleNamespace(TensorIOMode=SimpleNamespace(INPUT="input"), nptype=lambda dtype: dtype)


def test_run_chunks_pads_and_copies_through_device_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run loop without a GPU: cuda-python and the engine are faked over host memory."""
    cuda = FakeCuda()
    monkeypatch.setattr(trt_mod, "_cudart", lambda: cuda)
    engine = FakeEngine()
    backend = TensorRTBackend._from_engine(FAKE_TRT, None, engine, Precision.FP16)
    assert (backend.min_batch, backend.max_batch, backend.feature_dim) == (1, 32, DIM)
    images = _images(75)
    for n in (0, 1, 7, 32, 75):
        np.testing.assert_allclose(backend.run(images[:n]), _reference(images[:n]), rtol=1e-5, atol=1e-6)
    assert engine.runs == 1 + 1 + 1 + 3  # 75 images in chunks of 32, 32 and 11
    with pytest.raises(InputError, match=r"\(N, 3, 16, 16\)"):
        backend.run(images[:, :, :8])
    backend.close()
    assert sorted(cuda.freed) == sorted(backend.buffers)
    with pytest.raises(BackendError, match="closed"):
        backend.run(images[:1])

    static = TensorRTBackend._from_engine(FAKE_TRT, None, FakeEngine(batch=4), Precision.FP32)
    assert (static.min_batch, static.max_batch) == (4, 4)
    np.testing.assert_allclose(static.run(images[:6]), _reference(images[:6]), rtol=1e-5, atol=1e-6)  # 4 + 2 padded


def fake_tensorrt(flags: tuple[str, ...] = ("FP16", "INT8"), errors: tuple[str, ...] = ()) -> SimpleNamespace:
    """Just enough of the tensorrt module for build_engine; records every call in ``calls``."""
    calls: list[tuple[Any, ...]] = []

    class Recorder:
        WARNING = "warning"

        def __init__(self, *args: Any) -> None:
            calls.append((type(self).__name__, *args))

        def __getattr__(self, name: str) -> Any:  # any other method: record the call, report success
            def method(*args: Any, **kwargs: Any) -> Any:
                calls.append((name, *args))
                return SimpleNamespace(serialize=lambda: b"timings") if name == "create_timing_cache" else True

            return method

    class Builder(Recorder):
        def create_network(self, flags: int) -> Any:
            calls.append(("network_flags", flags))
            return SimpleNamespace(num_inputs=1, num_outputs=1, get_input=lambda i: SimpleNamespace(
                name="images", shape=(-1, 3, -1, -1)))  # fmt: skip

        def create_builder_config(self) -> Any:
            return Recorder()

        def create_optimization_profile(self) -> Any:
            return Recorder()

        def build_serialized_network(self, network: Any, config: Any) -> bytes:
            return b"plan"

    class Parser(Recorder):
        num_errors = len(errors)

        def parse(self, data: bytes) -> bool:
            return not errors

        def get_error(self, i: int) -> str:
            return errors[i]

    namespace = SimpleNamespace(calls=calls, Builder=Builder, OnnxParser=Parser, Logger=Recorder)
    namespace.BuilderFlag = SimpleNamespace(**{f: f for f in flags})
    namespace.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)
    namespace.MemoryPoolType = SimpleNamespace(WORKSPACE="ws")
    return namespace


@pytest.fixture
def use_fake_trt(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(fake: SimpleNamespace) -> SimpleNamespace:
        monkeypatch.setattr(trt_mod, "_trt", lambda: fake)
        trt_mod._logger.cache_clear()
        return fake

    yield install
    trt_mod._logger.cache_clear()  # never leave a fake logger behind for real TensorRT


@pytest.mark.parametrize(
    ("precision", "flags", "network_flags", "set_flags"),
    [
        (Precision.INT8, ("FP16", "INT8"), 0, ["INT8", "FP16"]),  # TensorRT 10: Q/DQ + INT8, FP16 for the rest
        (Precision.FP16, ("FP16", "INT8"), 0, ["FP16"]),
        (Precision.FP32, ("FP16", "INT8"), 0, []),
        (Precision.INT8, (), 1 << 1, []),  # TensorRT >= 11: no precision flags, strongly typed networks
    ],
)
def test_build_engine_sets_profile_flags_and_timing_cache(
    use_fake_trt: Any, config: EngineBuildConfig, precision: Precision, flags: tuple[str, ...],
    network_flags: int, set_flags: list[str],
) -> None:  # fmt: skip
    fake = use_fake_trt(fake_tensorrt(flags))
    config = EngineBuildConfig(precision=precision, engine_dir=config.engine_dir, timing_cache=config.timing_cache)
    assert build_engine(b"onnx", config, image_size=(SIZE, SIZE)) == b"plan"
    calls = fake.calls
    assert ("network_flags", network_flags) in calls
    assert [c[1] for c in calls if c[0] == "set_flag"] == set_flags
    assert ("set_shape", "images", (1, 3, SIZE, SIZE), (8, 3, SIZE, SIZE), (32, 3, SIZE, SIZE)) in calls
    assert ("set_memory_pool_limit", "ws", 1 << 30) in calls
    assert any(c[0] == "set_timing_cache" for c in calls)
    assert config.timing_cache is not None and config.timing_cache.is_file()  # saved after the build


def test_build_engine_reports_every_parser_error(use_fake_trt: Any, config: EngineBuildConfig) -> None:
    use_fake_trt(fake_tensorrt(errors=("node 3: unsupported op Foo", "node 9: zero point must be 0")))
    int8 = EngineBuildConfig(precision=Precision.INT8, engine_dir=config.engine_dir, timing_cache=None)
    with pytest.raises(BackendError) as info:
        build_engine(b"onnx", int8)
    message = str(info.value)
    assert "could not parse" in message and "unsupported op Foo" in message and "zero point must be 0" in message
    assert "symmetric int8" in message  # the hint for the usual int8 cause


# ----------------------------------------------------------------------------------------------- needs a GPU


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ALL, ids=lambda p: p.value)
def test_engine_builds_and_passes_golden(trt_bundle: Bundle, config: EngineBuildConfig, precision: Precision) -> None:
    with TensorRTBackend.from_bundle(trt_bundle, precision, config) as backend:
        report = check_against_golden(backend, trt_bundle)
        assert backend.name == "tensorrt" and backend.precision is precision
    assert report.passed, report


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("precision", [Precision.FP16, Precision.INT8], ids=lambda p: p.value)
def test_dynamic_batch_and_chunking(trt_bundle: Bundle, config: EngineBuildConfig, precision: Precision) -> None:
    images = _images(75, seed=3)
    expected = _reference(images)
    with TensorRTBackend.from_bundle(trt_bundle, precision, config) as backend:
        assert (backend.min_batch, backend.max_batch) == (1, 32)
        for n in (0, 1, 7, 8, 32, 75):  # 75 > max batch: three chunks
            out = backend.run(images[:n])
            assert out.shape == (n, DIM) and out.dtype == np.float32
            if n:
                cos = np.sum(out * expected[:n], 1) / np.linalg.norm(out, axis=1) / np.linalg.norm(expected[:n], axis=1)
                assert cos.min() > 0.99
        one_by_one = np.concatenate([backend.run(images[i : i + 1]) for i in range(8)])
        np.testing.assert_allclose(one_by_one, backend.run(images[:8]), rtol=2e-2, atol=2e-2)


@needs_gpu
@pytest.mark.gpu
def test_second_load_hits_the_cache(
    trt_bundle: Bundle, config: EngineBuildConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = trt_mod.build_engine

    def counting(*args: Any, **kwargs: Any) -> bytes:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(trt_mod, "build_engine", counting)
    TensorRTBackend.from_bundle(trt_bundle, Precision.FP16, config).close()
    assert len(calls) == 1 and config.timing_cache is not None and config.timing_cache.is_file()
    with TensorRTBackend.from_bundle(trt_bundle, Precision.FP16, config) as again:
        assert check_against_golden(again, trt_bundle).passed
    assert len(calls) == 1, "the second load must reuse the cached engine"


@needs_gpu
@pytest.mark.gpu
def test_damaged_cached_engine_is_rebuilt(trt_bundle: Bundle, config: EngineBuildConfig) -> None:
    TensorRTBackend.from_bundle(trt_bundle, Precision.FP16, config).close()
    (path,) = config.engine_dir.glob("*.engine")
    path.write_bytes(b"not an engine")
    with TensorRTBackend.from_bundle(trt_bundle, Precision.FP16, config) as backend:
        assert check_against_golden(backend, trt_bundle).passed
    assert path.stat().st_size > 100


@needs_gpu
@pytest.mark.gpu
def test_run_is_thread_safe_and_close_is_final(trt_bundle: Bundle, config: EngineBuildConfig) -> None:
    backend = TensorRTBackend.from_bundle(trt_bundle, Precision.FP16, config)
    batches = [_images(n, seed=n) for n in (1, 5, 13, 40)]
    expected = [backend.run(b) for b in batches]
    failures: list[str] = []

    def work(index: int) -> None:
        for _ in range(10):
            got = backend.run(batches[index % 4])
            if not np.allclose(got, expected[index % 4], atol=1e-3):
                failures.append(f"thread {index} got different features")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    backend.close()
    backend.close()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        backend.run(batches[0])


@needs_gpu
@pytest.mark.gpu
def test_the_exporters_tensorrt_int8_builds_and_auto_best_runs_it(
    exported_trt_bundle: Bundle, config: EngineBuildConfig
) -> None:
    """Not a hand-made Q/DQ model: what `edgetl export --quant-preset tensorrt` writes must build and verify."""
    with TensorRTBackend.from_bundle(exported_trt_bundle, Precision.INT8, config) as backend:
        assert check_against_golden(backend, exported_trt_bundle).passed
    backend = create_backend(exported_trt_bundle, backend="auto", precision="best")
    assert backend.name == "tensorrt" and backend.precision is Precision.INT8


@needs_gpu
@pytest.mark.gpu
def test_unparsable_onnx_lists_the_parser_errors(config: EngineBuildConfig) -> None:
    with pytest.raises(BackendError, match="could not parse the ONNX model"):
        build_engine(b"this is not an onnx model", config)
