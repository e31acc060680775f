"""TensorRT backend: an engine built on the device from the bundle's ONNX, cached, and re-checked.

Engines are not portable across GPUs or TensorRT versions (DESIGN §5), so each device builds its own
and caches it under a key of ONNX SHA-256 + TensorRT version + GPU name/compute capability + the
build settings. int8 engines come from the bundle's explicitly quantized (Q/DQ) ONNX: no calibrator,
since TensorRT's implicit calibrators are deprecated since 10.1. ``tensorrt`` and ``cuda-python`` are
imported lazily, inside the functions that need them; this module never imports torch or onnx.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime._optional import is_available, require
from edgetl_runtime.atomic import atomic_write
from edgetl_runtime.backends.engine_config import (
    DEFAULT_ENGINE_DIR,
    EngineBuildConfig,
    engine_cache_key,
    precision_flags,
    profile_shapes,
)
from edgetl_runtime.backends.int8_targets import int8_problem
from edgetl_runtime.bundle.manifest import Precision
from edgetl_runtime.bundle.reader import Bundle, requested_precision
from edgetl_runtime.errors import BackendError, InputError, OptionalDependencyError, raise_all


def gpu_available() -> bool:
    """Whether cuda-python is installed and sees at least one CUDA device. Cheap; never raises."""
    try:
        if not is_available("cuda"):
            return False
        err, count = _cudart().cudaGetDeviceCount()
        return int(err) == 0 and int(count) > 0
    except Exception:  # a broken driver or install means "no GPU", not a crash
        return False


def device_info() -> dict[str, str]:
    """TensorRT version, GPU name and compute capability: what an engine is tied to."""
    trt, cudart = _trt(), _cudart()
    device = _cuda(cudart.cudaGetDevice(), "cudaGetDevice")
    prop = _cuda(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return {"tensorrt": str(trt.__version__), "gpu_name": name.rstrip("\x00").strip(),
            "compute_capability": f"{prop.major}.{prop.minor}"}  # fmt: skip


def build_engine(onnx_bytes: bytes, config: EngineBuildConfig, image_size: tuple[int, int] | None = None) -> bytes:
    """Parse ONNX and build a serialized engine with a dynamic-batch profile.

    ``image_size`` fills the input's height and width when the ONNX leaves them dynamic.
    """
    trt = _trt()
    typed = _strongly_typed(trt)
    builder = trt.Builder(_logger())
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if typed else 0)
    parser = trt.OnnxParser(network, _logger())
    if not parser.parse(onnx_bytes):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or ["no error reported"]
        if config.precision is Precision.INT8:  # the usual cause: asymmetric (uint8, zero point != 0) Q/DQ
            errors.append("TensorRT needs symmetric int8 Q/DQ: int8 activations and weights with zero point 0")
        raise_all(BackendError, errors, "TensorRT could not parse the ONNX model; re-export it or upgrade TensorRT")
    if network.num_inputs != 1 or network.num_outputs != 1:
        counts = f"{network.num_inputs} and {network.num_outputs}"
        raise BackendError(f"Expected a backbone with 1 input and 1 output, got {counts}.")
    tensor = network.get_input(0)
    build = builder.create_builder_config()
    build.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_bytes)
    build.builder_optimization_level = config.builder_optimization_level
    if any(d < 0 for d in tensor.shape):
        profile = builder.create_optimization_profile()
        profile.set_shape(tensor.name, *profile_shapes(tuple(tensor.shape), config, image_size))
        build.add_optimization_profile(profile)
    for flag in () if typed else precision_flags(config.precision):
        build.set_flag(getattr(trt.BuilderFlag, flag))
    cache = _attach_timing_cache(build, config.timing_cache)
    serialized = builder.build_serialized_network(network, build)
    if serialized is None:
        raise BackendError(
            f"TensorRT failed to build the {config.precision.value} engine; its log above says why "
            "(an unsupported layer, or too little workspace: raise workspace_bytes)."
        )
    if cache is not None and config.timing_cache is not None:
        try:
            with atomic_write(config.timing_cache) as fh:
                fh.write(bytes(cache.serialize()))
        except OSError as exc:
            warnings.warn(f"Could not save the TensorRT timing cache ({exc}); the next build re-times.", stacklevel=2)
    return bytes(serialized)


def tensorrt_precision(bundle: Bundle, wanted: str | Precision = "best") -> Precision:
    """The precision TensorRT runs for ``wanted``: ``best`` is int8 when TensorRT can build the bundle's
    int8 model, else fp16 (shipped, or lowered from fp32 by TensorRT 10), else fp32."""
    manifest = bundle.manifest
    asked = requested_precision(wanted)
    if asked is None:  # best
        if int8_problem(manifest) is None:
            return Precision.INT8
        if Precision.FP16 in manifest.precisions or not _strongly_typed(_trt()):
            return Precision.FP16
        return Precision.FP32
    if asked is Precision.FP16 and Precision.FP16 not in manifest.precisions:
        _source_model(bundle, Precision.FP16)  # TensorRT 10 lowers fp32 itself; 11 raises naming the fix
        return Precision.FP16
    precision = bundle.resolve_precision(asked)
    problem = int8_problem(manifest) if precision is Precision.INT8 else None
    if problem:
        raise BackendError(f"TensorRT cannot run int8 here: {problem}.")
    return precision


def engine_cache_path(bundle: Bundle, precision: Precision, config: EngineBuildConfig) -> Path:
    """Where the engine for this bundle, precision, device and config lives (or will live)."""
    _, source = _source_model(bundle, precision)
    info, config = device_info(), dataclasses.replace(config, precision=precision)
    digest = bundle.manifest.members[source.member].sha256  # verified when the bundle was opened
    shape = (3, *bundle.manifest.preprocess.input_size)
    key = engine_cache_key(digest, info["tensorrt"], info["gpu_name"], info["compute_capability"], config, shape)
    return config.engine_dir / f"{bundle.manifest.backbone.name}-{precision.value}-{key[:24]}.engine"


def load_or_build_engine(bundle: Bundle, precision: Precision, config: EngineBuildConfig | None = None,
                         *, rebuild: bool = False) -> bytes:  # fmt: skip
    """The cached engine for this bundle, precision and device, building and caching it on a miss."""
    config = dataclasses.replace(config or EngineBuildConfig(), precision=precision)  # validates precision
    precision = config.precision
    path = engine_cache_path(bundle, precision, config)
    if path.is_file() and not rebuild:
        return path.read_bytes()
    onnx_bytes, source = _source_model(bundle, precision)
    engine = build_engine(onnx_bytes, config, image_size=bundle.manifest.preprocess.input_size)
    meta = {**device_info(), "source_member": source.member, "config": config.to_dict()}
    try:
        with atomic_write(path) as fh:
            fh.write(engine)
        with atomic_write(path.with_suffix(".json")) as fh:  # for people inspecting the cache
            fh.write(json.dumps(meta, indent=2).encode())
    except OSError as exc:  # a read-only or full disk costs the next start a rebuild, not this one its engine
        message = f"Could not cache the TensorRT engine in {config.engine_dir} ({exc}); pass a writable engine_dir."
        warnings.warn(message, stacklevel=2)
    return engine


@dataclass
class TensorRTBackend:
    """Features through a TensorRT engine. One execution context behind a lock: safe across threads."""

    runtime: Any
    engine: Any
    context: Any
    cudart: Any
    stream: Any
    precision: Precision
    input_name: str
    output_name: str
    sample_shape: tuple[int, ...]  # (3, H, W)
    feature_dim: int
    min_batch: int
    max_batch: int
    input_dtype: np.dtype[Any]
    output_dtype: np.dtype[Any]
    buffers: tuple[int, int]  # device pointers (input, output), sized for max_batch
    name: str = "tensorrt"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_bundle(cls, bundle: Bundle, precision: Precision,
                    config: EngineBuildConfig | None = None) -> TensorRTBackend:  # fmt: skip
        """Load the cached engine for this device (building it on a miss) and ready it to run."""
        trt, precision = _trt(), Precision(precision)
        runtime = trt.Runtime(_logger())
        engine = runtime.deserialize_cuda_engine(load_or_build_engine(bundle, precision, config))
        if engine is None:  # a damaged or stale cache entry: rebuild it once
            engine = runtime.deserialize_cuda_engine(load_or_build_engine(bundle, precision, config, rebuild=True))
        if engine is None:
            raise BackendError("TensorRT could not deserialize the engine it just built; see its log above.")
        return cls._from_engine(trt, runtime, engine, precision)

    @classmethod
    def _from_engine(cls, trt: Any, runtime: Any, engine: Any, precision: Precision) -> TensorRTBackend:
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(f"Expected an engine with 1 input and 1 output, got {inputs} and {outputs}.")
        shape = tuple(int(d) for d in engine.get_tensor_shape(inputs[0]))
        if min(shape) > 0:  # static shape
            low, high, sample = shape[0], shape[0], shape[1:]
        else:  # dynamic: read the range from optimization profile 0
            smallest, _, largest = (tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(inputs[0], 0))
            low, high, sample = smallest[0], largest[0], largest[1:]
        context, cudart = engine.create_execution_context(), _cudart()
        in_dtype, out_dtype = (np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in (inputs[0], outputs[0]))
        if not context.set_input_shape(inputs[0], (high, *sample)):
            raise BackendError(f"The engine refuses its own largest input shape {(high, *sample)}.")
        per_sample = int(np.prod(tuple(context.get_tensor_shape(outputs[0]))[1:]))
        stream = _cuda(cudart.cudaStreamCreate(), "cudaStreamCreate")
        sizes = (high * int(np.prod(sample)) * in_dtype.itemsize, high * per_sample * out_dtype.itemsize)
        pointers: list[int] = []
        try:
            for size in sizes:
                pointers.append(int(_cuda(cudart.cudaMalloc(size), "cudaMalloc")))
        except BackendError:
            _release(cudart, stream, pointers)
            raise
        for tensor, pointer in zip((inputs[0], outputs[0]), pointers, strict=True):
            context.set_tensor_address(tensor, pointer)
        return cls(runtime, engine, context, cudart, stream, precision, inputs[0], outputs[0], sample, per_sample,
                   low, high, in_dtype, out_dtype, (pointers[0], pointers[1]))  # fmt: skip

    def run(self, inputs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """``(N, 3, H, W)`` float32 -> ``(N, D)`` float32, in chunks of at most ``max_batch``."""
        if inputs.ndim != 4 or inputs.dtype != np.float32 or tuple(inputs.shape[1:]) != self.sample_shape:
            raise InputError(f"Backend input must be float32 (N, {', '.join(map(str, self.sample_shape))}), "
                             f"got {inputs.dtype} {inputs.shape}.")  # fmt: skip
        chunks = []
        with self._lock:
            if self.context is None:
                raise BackendError("This TensorRTBackend is closed; create a new one.")
            for start in range(0, len(inputs), self.max_batch):
                chunks.append(self._run_chunk(inputs[start : start + self.max_batch]))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.feature_dim), np.float32)

    def _run_chunk(self, chunk: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        n, cudart = len(chunk), self.cudart
        host = np.ascontiguousarray(chunk, dtype=self.input_dtype)  # (n, 3, H, W)
        if n < self.min_batch:  # an engine with a static or larger minimum batch: pad with zeros
            host = np.concatenate([host, np.zeros((self.min_batch - n, *self.sample_shape), self.input_dtype)])
        if not self.context.set_input_shape(self.input_name, host.shape):
            raise BackendError(f"The engine refuses input shape {host.shape}.")
        to_device, to_host = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _cuda(cudart.cudaMemcpyAsync(self.buffers[0], host.ctypes.data, host.nbytes, to_device, self.stream), "copy in")
        if not self.context.execute_async_v3(int(self.stream)):
            raise BackendError("TensorRT execution failed; see its log above.")
        out = np.empty((len(host), self.feature_dim), self.output_dtype)  # (batch, D)
        _cuda(cudart.cudaMemcpyAsync(out.ctypes.data, self.buffers[1], out.nbytes, to_host, self.stream), "copy out")
        _cuda(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return out[:n].astype(np.float32, copy=False)

    def close(self) -> None:
        """Free device buffers and the stream. Idempotent."""
        with self._lock:
            if self.context is not None:
                _release(self.cudart, self.stream, list(self.buffers))
                self.context = self.engine = None

    def __enter__(self) -> TensorRTBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _source_model(bundle: Bundle, precision: Precision) -> tuple[bytes, Precision]:
    """The ONNX to build from: the bundle's model at ``precision``; for fp16, the fp32 one if none is shipped."""
    shipped = precision in bundle.manifest.precisions
    if not shipped and precision is Precision.FP16 and not _strongly_typed(_trt()):  # TensorRT 10 lowers fp32 itself
        return bundle.model_bytes(Precision.FP32), Precision.FP32
    return bundle.model_bytes(precision), precision  # raises a BundleError naming what the bundle ships


def _attach_timing_cache(build: Any, path: Path | None) -> Any:
    if path is None:
        return None
    try:
        cache = build.create_timing_cache(path.read_bytes() if path.is_file() else b"")
        if cache is not None and build.set_timing_cache(cache, ignore_mismatch=False):
            return cache
    except Exception:  # damaged, or from another GPU or TensorRT version: start afresh
        pass
    cache = build.create_timing_cache(b"")
    build.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _release(cudart: Any, stream: Any, pointers: list[int]) -> None:
    for pointer in pointers:
        cudart.cudaFree(pointer)
    cudart.cudaStreamDestroy(stream)


def _cuda(result: Any, what: str) -> Any:
    """Unwrap cuda-python's ``(error, value...)`` tuples, raising a BackendError on failure."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"CUDA {what} failed with {err!r}; check the NVIDIA driver and that a GPU is visible.")
    return values[0] if len(values) == 1 else None


def _strongly_typed(trt: Any) -> bool:
    """TensorRT >= 11 has no FP16/INT8 builder flags: every network is strongly typed."""
    return not hasattr(trt.BuilderFlag, "FP16")


def _trt() -> Any:
    return require("tensorrt", "The TensorRT backend")


def _cudart() -> Any:
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (>= 12.6, 13) or ``cuda.cudart`` (older)."""
    require("cuda", "The TensorRT backend")
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise OptionalDependencyError("cuda-python is installed without a runtime module. Fix: pip install -U cuda-python.")


@functools.cache
def _logger() -> Any:
    """One TensorRT logger per process, as TensorRT expects."""
    trt = _trt()
    return trt.Logger(trt.Logger.WARNING)


__all__ = [
    "DEFAULT_ENGINE_DIR",
    "EngineBuildConfig",
    "TensorRTBackend",
    "engine_cache_key",
    "int8_problem",
    "profile_shapes",
]
