"""``measure_interleaved``: round-robin order, per-function call counts, warm-up, and its errors (no timing asserts)."""

from __future__ import annotations

import pytest

from edgetl_runtime.errors import ConfigError
from edgetl_runtime.measure.latency import measure_interleaved

pytestmark = pytest.mark.runtime


def test_calls_alternate_and_counts_follow_calls_per_round() -> None:
    calls: list[str] = []
    stats = measure_interleaved(
        {"slow": lambda: calls.append("slow"), "fast": lambda: calls.append("fast")},
        rounds=3,
        calls_per_round={"slow": 1, "fast": 2},
        warmup_rounds=1,
    )
    assert calls == ["slow", "fast", "fast"] * 4  # one warm-up round, then three timed rounds
    assert (stats["slow"].runs, stats["slow"].warmup) == (3, 1)
    assert (stats["fast"].runs, stats["fast"].warmup) == (6, 2)
    assert stats["fast"].min_ms <= stats["fast"].p50_ms <= stats["fast"].p99_ms


@pytest.mark.parametrize(
    "kwargs",
    [{"rounds": 0}, {"warmup_rounds": -1}, {"calls_per_round": 0}, {"calls_per_round": {"a": 0}}],
)
def test_bad_arguments_raise_one_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="measure_interleaved needs"):
        measure_interleaved({"a": lambda: None}, **kwargs)  # type: ignore[arg-type]


def test_no_functions_is_an_error() -> None:
    with pytest.raises(ConfigError):
        measure_interleaved({})
