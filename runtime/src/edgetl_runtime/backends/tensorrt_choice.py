"""TensorRT's half of :func:`~edgetl_runtime.backends.selection.select_backend`: whether it can run here, and an
engine built and checked against the bundle's golden features."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgetl_runtime._optional import is_available
from edgetl_runtime.backends.base import Backend, check_against_golden
from edgetl_runtime.bundle.manifest import Precision
from edgetl_runtime.bundle.reader import Bundle, requested_precision
from edgetl_runtime.errors import BackendError
from edgetl_runtime.warn import warn

if TYPE_CHECKING:
    from edgetl_runtime.backends.tensorrt import TensorRTBackend

__all__ = ["tensorrt_backend", "tensorrt_usable"]


def tensorrt_backend(bundle: Bundle, precision: str | Precision, verify: bool) -> Backend:
    """A TensorRT engine for ``precision`` (``best``: int8 where the bundle's int8 is TensorRT's form, stepping
    down to fp16 if it cannot be built), golden-checked; any failure is a BackendError and frees the engine."""
    from edgetl_runtime.backends.tensorrt import TensorRTBackend, tensorrt_precision

    chosen = tensorrt_precision(bundle, precision)
    try:
        return _verified_or_closed(TensorRTBackend.from_bundle(bundle, chosen), bundle, verify)
    except BackendError as exc:
        if requested_precision(precision) is not None or chosen is not Precision.INT8:  # only "best" may step down
            raise
        warn(f"TensorRT int8 failed ({exc}); trying TensorRT fp16.")
        fp16 = tensorrt_precision(bundle, Precision.FP16)
        return _verified_or_closed(TensorRTBackend.from_bundle(bundle, fp16), bundle, verify)


def _verified_or_closed(built: TensorRTBackend, bundle: Bundle, verify: bool) -> Backend:
    try:
        if verify:
            report = check_against_golden(built, bundle)
            if not report.passed:
                raise BackendError(
                    f"{built.name} ({built.precision.value}) disagrees with the host on the golden inputs: min cosine "
                    f"{report.min_cosine:.5f} < {report.threshold} against {report.reference}. Try another precision "
                    "or backend, or re-export the bundle."
                )
        return built
    except BackendError:
        built.close()  # free the GPU buffers of an engine nobody will use
        raise


def tensorrt_usable() -> bool:
    """Whether tensorrt and cuda are installed and a GPU answers (``backend="auto"`` then tries TensorRT)."""
    if not (is_available("tensorrt") and is_available("cuda")):
        return False
    from edgetl_runtime.backends.tensorrt import gpu_available

    return bool(gpu_available())
