"""Where one more run's p50 will fall: a prediction interval from process-level p50s, not from one process's calls.

A process's calls are not independent draws of "the latency here": the process itself (its thread pool's
placement, memory layout, what else the machine runs that minute) shifts all of them together. Two fresh
processes timing the same model a minute apart measured 2-63 % apart on a shared 2-core machine, while each
one's own order-statistics interval of the median was about +-2 %. So the unit is the process: each option is
timed in several fresh processes, its p50 is the median of their p50s, and its interval is a 95 % prediction
interval for the p50 of one more such process (what one ``edgetl-device bench`` run reports).

The process-to-process spread is taken in log space (a slow minute scales every option alike) and pooled
over every option of the comparison, so a dozen options x a few processes give it tens of degrees of freedom.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("median() needs at least one value.")
    return float(ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2)


def pooled_log_sd(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """The standard deviation of ``log(value)`` about each group's own mean, pooled over the groups, and its
    degrees of freedom (values minus groups; 0 when no group has two values: then the SD is nan)."""
    squares, df = 0.0, 0
    for group in groups:
        logs = [math.log(v) for v in group]
        if len(logs) < 2:
            continue
        mean = sum(logs) / len(logs)
        squares += sum((x - mean) ** 2 for x in logs)
        df += len(logs) - 1
    return (math.sqrt(squares / df), df) if df else (float("nan"), 0)


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile: exact for 1 and 2 degrees of freedom, else the Cornish-Fisher expansion (within
    0.004 of the exact value at 3 degrees of freedom, 1e-6 from 10 on). No scipy on a device."""
    if df < 1:
        return float("nan")
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    z, v = NormalDist().inv_cdf(p), float(df)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
        + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4)
    )


def prediction_interval(values: Sequence[float], sd: float, df: int, level: float = 0.95) -> tuple[float, float]:
    """The ``level`` interval for one more value around ``median(values)``, given the pooled log-space ``sd``.

    One more value differs from the median of n by a log-variance of ``sd**2 * (1 + pi / (2 n))`` (the median's
    own variance is ``pi / 2`` times the mean's: conservative for a few values), scaled by Student's t.
    (nan, nan) without a spread to scale by.
    """
    if not values or not math.isfinite(sd) or df < 1:
        return float("nan"), float("nan")
    half = t_quantile(0.5 + level / 2, df) * sd * math.sqrt(1 + math.pi / (2 * len(values)))
    center = median(values)
    return center * math.exp(-half), center * math.exp(half)
