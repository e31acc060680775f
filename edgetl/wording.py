"""How the host words its figures, one convention everywhere (``edgetl inspect``, ``edgetl export``, the demo).

Accuracy changes are *drops*: ``fp32 - other`` in percentage points, so a positive drop means the smaller
model is worse (the int8 guard's own sign). Measured values are printed apart from the threshold they are
judged against, never as two look-alike numbers side by side.
"""

from __future__ import annotations

from typing import Any

THRESHOLD_KEYS = ("min_cosine",)  # a check's configured bound, not a measurement
MEASURED_KEYS = ("cosine_min", "cosine_mean", "mean_cosine", "max_abs_diff")


def drop_points(check: dict[str, Any]) -> float | None:
    """``fp32 - int8`` accuracy in points from a check that records ``accuracy_delta`` (int8 - fp32)."""
    delta = check.get("accuracy_delta")
    return None if delta is None else -float(delta)


def drop_text(drop: float) -> str:
    """``drop +0.04 points`` (int8 worse) / ``drop -0.10 points`` (int8 better): the one sign convention."""
    return f"drop {drop:+.2f} points (fp32 - int8)"


def cosine_text(check: dict[str, Any]) -> list[str]:
    """Measured agreement first, each threshold labelled as one: ``cosine min 0.99990 (threshold >= 0.99500)``."""
    parts = [
        f"{name.replace('_', ' ')} {check[name]:.5f}" for name in MEASURED_KEYS if isinstance(check.get(name), float)
    ]
    bounds = [f"threshold >= {check[name]:.5f}" for name in THRESHOLD_KEYS if isinstance(check.get(name), float)]
    if bounds and parts:
        parts[0] += f" ({', '.join(bounds)})"
    elif bounds:
        parts.append(", ".join(bounds))
    return parts
