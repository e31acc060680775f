"""Feature agreement, computed one way everywhere: the golden check, ONNX parity, the int8 and fp16 checks."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edgetl_runtime.errors import InputError

# Pooled CNN/ViT features are O(1)-O(100); 1e6 leaves room for any real backbone and keeps squares and sums
# of thousands of them far from float32's overflow (an enrolment scaled by 1e37 merged as zero vectors).
MAX_FEATURE_MAGNITUDE = 1e6


def row_cosine(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Cosine similarity of matching rows of two ``(N, D)`` arrays, in float64.

    Two identical all-zero rows agree (1.0); a zero row against anything else, or a row holding NaN
    or Inf, scores 0.0, so a broken model can never pass a ``>= threshold`` test by producing NaN.
    """
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a64.ndim != 2 or a64.shape != b64.shape:
        raise InputError(f"row_cosine needs two (N, D) arrays of one shape, got {a64.shape} and {b64.shape}.")
    with np.errstate(invalid="ignore", over="ignore"):
        num = np.einsum("nd,nd->n", a64, b64)  # (N,)
        den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)  # (N,)
        ok = np.isfinite(num) & np.isfinite(den) & (den > 0)
    cosine = np.zeros(len(a64), dtype=np.float64)
    cosine[ok] = num[ok] / den[ok]
    cosine[~ok & (den == 0) & np.all(a64 == b64, axis=1)] = 1.0
    return cosine
