"""The backend protocol, backend selection, and the golden-output check every backend must pass."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from edgetl_runtime._optional import is_available
from edgetl_runtime.bundle import Bundle, requested_precision
from edgetl_runtime.errors import BackendError, ConfigError
from edgetl_runtime.manifest import Precision

if TYPE_CHECKING:
    from edgetl_runtime.backends.tensorrt import TensorRTBackend

BACKENDS = ("auto", "onnxruntime", "tensorrt")


class Backend(Protocol):
    """Runs the frozen backbone. Implementations must be safe to call from several threads."""

    name: str
    precision: Precision

    def run(self, inputs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """``(N, 3, H, W)`` float32 -> ``(N, D)`` float32 features."""
        ...


@dataclass(frozen=True)
class GoldenReport:
    """How far a backend's features are from the host's on the bundle's golden inputs.

    ``min_cosine`` compares with the host's output at the same precision (is this backend computing
    the same model?); ``min_cosine_fp32`` with the fp32 reference (how much did precision cost?).
    """

    min_cosine: float
    max_abs_diff: float
    passed: bool
    threshold: float
    reference: str
    min_cosine_fp32: float

    def to_dict(self) -> dict[str, float | bool | str]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# Same model, different kernels: fp32 must agree almost exactly; fp16 and int8 kernels (VNNI or not,
# TensorRT tactics) round differently, so they get a looser bound. Quantization error itself is
# judged on the host at the task level, never here.
GOLDEN_MIN_COSINE = {Precision.FP32: 0.9999, Precision.FP16: 0.999, Precision.INT8: 0.99}


def golden_reference_key(precision: Precision) -> str:
    """Name of the golden array holding the host's output at ``precision``."""
    return "features" if precision is Precision.FP32 else f"features_{precision.value}"


def check_against_golden(backend: Backend, bundle: Bundle) -> GoldenReport:
    """Run ``backend`` on the golden inputs; compare with the host's output at the same precision."""
    golden = bundle.golden()
    inputs = np.asarray(golden["inputs"], dtype=np.float32)  # (G, 3, H, W)
    fp32 = np.asarray(golden["features"], dtype=np.float32)  # (G, D)
    key = golden_reference_key(backend.precision)
    if key not in golden:  # an older bundle without per-precision references: only fp32 is known
        key = "features"
    expected = np.asarray(golden[key], dtype=np.float32)
    got = backend.run(inputs)
    cosine = _row_cosine(got, expected)
    threshold = GOLDEN_MIN_COSINE[backend.precision if key != "features" else Precision.FP32]
    if key == "features" and backend.precision is not Precision.FP32:
        threshold = 0.95  # precision loss included: only a sanity bound
    return GoldenReport(
        float(cosine.min()),
        float(np.abs(got - expected).max()),
        bool(cosine.min() >= threshold),
        threshold,
        key,
        float(_row_cosine(got, fp32).min()),
    )


def _row_cosine(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    num = np.sum(a.astype(np.float64) * b, axis=1)
    cosine: npt.NDArray[np.float64] = num / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return cosine


def create_backend(
    bundle: Bundle,
    backend: str = "auto",
    precision: str | Precision = "best",
    threads: int | None = None,
    verify: bool = True,
) -> Backend:
    """Pick and build a backend; ``auto`` prefers TensorRT when a GPU and tensorrt are present.

    With ``verify`` the backend must reproduce the golden features before it is returned. With
    ``precision="best"``, a TensorRT int8 engine that cannot be built or verified gives way to fp16.
    Under ``auto``, TensorRT failing altogether (no engine, an unwritable engine cache, a CUDA error)
    gives way to onnxruntime with a warning; asking for ``tensorrt`` by name raises instead.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"Unknown backend {backend!r}; choose one of {list(BACKENDS)}.")
    if backend == "tensorrt" or (backend == "auto" and _tensorrt_usable()):
        try:
            return _tensorrt_backend(bundle, precision, verify)
        except Exception as exc:  # any TensorRT/CUDA failure: the CPU path below still serves the device
            if backend == "tensorrt":
                raise
            warnings.warn(
                f"TensorRT is not usable for this bundle, using onnxruntime: {type(exc).__name__}: {exc}", stacklevel=2
            )
    from edgetl_runtime.backends.onnxruntime import OrtBackend

    built = OrtBackend.from_bundle(bundle, bundle.resolve_precision(precision), threads=threads)
    return _verified(built, bundle) if verify else built


def _tensorrt_backend(bundle: Bundle, precision: str | Precision, verify: bool) -> Backend:
    from edgetl_runtime.backends.tensorrt import TensorRTBackend, tensorrt_precision

    chosen = tensorrt_precision(bundle, precision)
    try:
        return _verified_or_closed(TensorRTBackend.from_bundle(bundle, chosen), bundle, verify)
    except BackendError as exc:
        if requested_precision(precision) is not None or chosen is not Precision.INT8:  # only "best" may step down
            raise
        warnings.warn(f"TensorRT int8 failed ({exc}); trying TensorRT fp16.", stacklevel=3)
        fp16 = tensorrt_precision(bundle, Precision.FP16)
        return _verified_or_closed(TensorRTBackend.from_bundle(bundle, fp16), bundle, verify)


def _verified_or_closed(built: TensorRTBackend, bundle: Bundle, verify: bool) -> Backend:
    try:
        return _verified(built, bundle) if verify else built
    except BackendError:
        built.close()  # free the GPU buffers of an engine nobody will use
        raise


def _verified(built: Backend, bundle: Bundle) -> Backend:
    report = check_against_golden(built, bundle)
    if not report.passed:
        hint = ""
        if built.precision is Precision.INT8 and report.reference != "features":
            hint = (
                " If the bundle was exported by an edgetl older than its exact-int8 sessions with 8-bit weights "
                "(x86-vnni, arm or tensorrt preset) on a CPU without VNNI, its golden int8 features came from a "
                "saturating kernel: re-export it."
            )
        raise BackendError(
            f"{built.name} ({built.precision.value}) disagrees with the host on the golden inputs: min cosine "
            f"{report.min_cosine:.5f} < {report.threshold} against {report.reference}. This device computes a "
            f"different model; try another precision or backend, or re-export the bundle.{hint}"
        )
    return built


def _tensorrt_usable() -> bool:
    if not (is_available("tensorrt") and is_available("cuda")):
        return False
    from edgetl_runtime.backends.tensorrt import gpu_available

    return bool(gpu_available())
