"""The backend protocol, backend selection, and the golden-output check every backend must pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from edgetl_runtime._optional import is_available
from edgetl_runtime.bundle import Bundle
from edgetl_runtime.errors import BackendError, ConfigError
from edgetl_runtime.manifest import Precision

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
    """How far a backend's features are from the host's fp32 features on the bundle's golden inputs."""

    min_cosine: float
    max_abs_diff: float
    passed: bool
    threshold: float

    def to_dict(self) -> dict[str, float | bool]:
        return {k: getattr(self, k) for k in ("min_cosine", "max_abs_diff", "passed", "threshold")}


# Reduced precisions are judged by direction, not by atol (DESIGN §5).
GOLDEN_MIN_COSINE = {Precision.FP32: 0.9999, Precision.FP16: 0.999, Precision.INT8: 0.95}


def check_against_golden(backend: Backend, bundle: Bundle) -> GoldenReport:
    """Run ``backend`` on the golden inputs and compare with the host's fp32 features."""
    golden = bundle.golden()
    inputs = np.asarray(golden["inputs"], dtype=np.float32)  # (G, 3, H, W)
    expected = np.asarray(golden["features"], dtype=np.float32)  # (G, D)
    got = backend.run(inputs)
    cos = np.sum(got * expected, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1) + 1e-12)
    threshold = GOLDEN_MIN_COSINE[backend.precision]
    return GoldenReport(float(cos.min()), float(np.abs(got - expected).max()), bool(cos.min() >= threshold), threshold)


def create_backend(
    bundle: Bundle,
    backend: str = "auto",
    precision: str | Precision = "best",
    threads: int | None = None,
    verify: bool = True,
) -> Backend:
    """Pick and build a backend; ``auto`` prefers TensorRT when a GPU and tensorrt are present.

    With ``verify`` the backend must reproduce the golden features before it is returned.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"Unknown backend {backend!r}; choose one of {list(BACKENDS)}.")
    chosen = bundle.resolve_precision(precision)
    if backend == "tensorrt" or (backend == "auto" and _tensorrt_usable()):
        from edgetl_runtime.backends.tensorrt import TensorRTBackend

        built: Backend = TensorRTBackend.from_bundle(bundle, chosen)
    else:
        from edgetl_runtime.backends.onnxruntime import OrtBackend

        built = OrtBackend.from_bundle(bundle, chosen, threads=threads)
    if verify:
        report = check_against_golden(built, bundle)
        if not report.passed:
            raise BackendError(
                f"{built.name} ({chosen.value}) disagrees with the host on the golden inputs: min cosine "
                f"{report.min_cosine:.5f} < {report.threshold}. Try another precision or backend, or re-export."
            )
    return built


def _tensorrt_usable() -> bool:
    if not (is_available("tensorrt") and is_available("cuda")):
        return False
    from edgetl_runtime.backends.tensorrt import gpu_available

    return bool(gpu_available())
