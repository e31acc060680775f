"""Where one more run's p50 will fall: a prediction interval from process-level p50s, not from one process's calls.

One run's calls are not independent draws of "the latency here": on a shared 2-vCPU VM the machine has slow
spells of several seconds (one process timing Lite1-224 fp32 at 8.5 ms, then 12.3 ms for ~8 s, with nothing
else running), and a niced neighbour still takes an equal share of the CPU (Linux autogroups), slowing batch 1
3-4x while it runs. An order-statistics interval of one run's median (about +-2 %) says nothing about the
next run. So the unit is the process: each option is timed in several fresh processes spread over the
comparison, its p50 is the median of their p50s, and its interval is a 95 % prediction interval for the p50
of one more such process (what one ``edgetl-device bench`` run reports).

The spread is taken in log space (a slow spell scales every option alike) and pooled over every option of
the comparison. It is not normal: most processes agree within a few %, and the few caught in a slow spell
are 25-40 % slower. So the interval is distribution-free where there are enough processes (split-conformal
on leave-one-out residuals: each process's log p50 against the median of its option's other processes, the
``ceil((N + 1) * 0.95)``-th smallest of the N pooled absolute residuals), and a Student-t interval on the
pooled log SD only below 19 of them (a comparison of one or two options).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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


CONFORMAL = "conformal"
STUDENT_T = "student-t"


def log_half_widths(groups: Mapping[str, Sequence[float]], level: float = 0.95) -> tuple[dict[str, float], str]:
    """Each group's half-width in log space of the ``level`` interval for one more value about its median, and
    the method: :data:`CONFORMAL` from the pooled leave-one-out residuals where there are enough of them, else
    :data:`STUDENT_T` from the pooled log SD (nan without two values in any group)."""
    residuals = sorted(
        abs(math.log(v[j]) - math.log(median([*v[:j], *v[j + 1 :]])))
        for v in groups.values()
        if len(v) >= 2
        for j in range(len(v))
    )
    k = math.ceil((len(residuals) + 1) * level)
    if k <= len(residuals):
        return dict.fromkeys(groups, residuals[k - 1]), CONFORMAL
    sd, df = pooled_log_sd(list(groups.values()))
    return {name: student_half_width(len(v), sd, df, level) for name, v in groups.items()}, STUDENT_T


def student_half_width(n: int, sd: float, df: int, level: float = 0.95) -> float:
    """One more value differs from the median of n by a log-variance of ``sd**2 * (1 + pi / (2 n))`` (the
    median's own variance is ``pi / 2`` times the mean's: conservative for a few values), scaled by Student's t."""
    if n < 1 or not math.isfinite(sd) or df < 1:
        return float("nan")
    return t_quantile(0.5 + level / 2, df) * sd * math.sqrt(1 + math.pi / (2 * n))


def interval(values: Sequence[float], log_half_width: float) -> tuple[float, float]:
    """``median(values)`` times and divided by ``exp(log_half_width)``; (nan, nan) without a width."""
    if not values or not math.isfinite(log_half_width):
        return float("nan"), float("nan")
    center = median(values)
    return center * math.exp(-log_half_width), center * math.exp(log_half_width)


def prediction_interval(values: Sequence[float], sd: float, df: int, level: float = 0.95) -> tuple[float, float]:
    """The Student-t ``level`` interval for one more value around ``median(values)``, given the pooled log
    ``sd`` and its degrees of freedom; (nan, nan) without a spread to scale by."""
    return interval(values, student_half_width(len(values), sd, df, level))
