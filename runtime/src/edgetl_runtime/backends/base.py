"""The backend protocol and the golden-output check every backend must pass (selection: ``selection.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from edgetl_runtime.bundle.graph_check import check_features
from edgetl_runtime.bundle.manifest import Precision
from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.numerics import row_cosine

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
    got = check_features(backend.run(inputs), len(inputs), fp32.shape[1], backend.name)  # (G, D) or BackendError
    cosine = row_cosine(got, expected)
    threshold = GOLDEN_MIN_COSINE[backend.precision if key != "features" else Precision.FP32]
    if key == "features" and backend.precision is not Precision.FP32:
        threshold = 0.95  # precision loss included: only a sanity bound
    return GoldenReport(
        float(cosine.min()),
        float(np.abs(got - expected).max()),
        bool(cosine.min() >= threshold),
        threshold,
        key,
        float(row_cosine(got, fp32).min()),
    )
