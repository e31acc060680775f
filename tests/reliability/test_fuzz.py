"""Fuzzing: only the documented exception classes (``_fuzz.DOCUMENTED``) may escape each entry point.

``EDGETL_FUZZ_EXAMPLES`` sets the examples per target (CI default 100; benchmarks/stress.py runs >= 1000).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("hypothesis")

from ._fuzz import DOCUMENTED, TARGETS, Fixture, run_target
from ._support import env_int

pytestmark = pytest.mark.runtime

EXAMPLES = env_int("EDGETL_FUZZ_EXAMPLES", 100)


@pytest.fixture(scope="module")
def fixture() -> Iterator[Fixture]:
    fx = Fixture.build()
    yield fx
    fx.close()


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_only_documented_exceptions_escape(fixture: Fixture, target: str) -> None:
    counts = run_target(target, fixture, EXAMPLES)
    assert counts["undocumented"] == 0, f"{target}: undocumented exceptions, first ones: {counts['findings']}"
    assert counts["examples"] >= min(EXAMPLES, 50), counts  # the strategy really generated inputs
    assert counts["documented"] > 0, f"{target}: no input was refused; the strategy is too tame ({counts})"
    assert counts["ok"] > 0, f"{target}: no input was accepted; the success path went untested ({counts})"


def test_documented_set_is_explicit_and_narrow() -> None:
    """Each target names its own error classes; nothing as broad as Exception or ValueError."""
    assert set(DOCUMENTED) == set(TARGETS)
    for classes in DOCUMENTED.values():
        assert all(c not in (Exception, ValueError, TypeError, OSError) for c in classes)


def test_the_harness_counts_an_undocumented_exception(fixture: Fixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counts, not claims: a planted bug (a raw KeyError) must show up as a finding."""
    from . import _fuzz

    def broken(fx: Fixture):  # type: ignore[no-untyped-def]
        strategy, _ = _fuzz._spec(fx)
        return strategy, lambda data: dict[str, int]()["missing"]

    monkeypatch.setitem(_fuzz.TARGETS, "preprocess_spec_from_dict", broken)
    counts = run_target("preprocess_spec_from_dict", fixture, 10)
    assert counts["undocumented"] == counts["examples"] > 0
    assert counts["findings"][0].startswith("KeyError")
