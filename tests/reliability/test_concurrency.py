"""Eight threads predict while one enrols: no exception, no torn read, a consistent final state.

``EDGETL_STRESS_SECONDS`` sets how long each run lasts (CI default 2 s; benchmarks/stress.py runs >= 10 s).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ._support import env_float, run_concurrency

pytestmark = pytest.mark.runtime

SECONDS = env_float("EDGETL_STRESS_SECONDS", 2.0)


@pytest.mark.parametrize("head", ["ncm", "auto"])
def test_eight_predictors_one_enroller(reliability_bundle: Path, tmp_path: Path, head: str) -> None:
    result = run_concurrency(
        reliability_bundle, tmp_path / "state.sqlite", SECONDS / 2 if head == "auto" else SECONDS, head=head
    )
    assert result["n_errors"] == 0, result["errors"]
    assert result["torn"] == 0, result
    assert result["corrupt"] == 0, result["problems"]
    assert result["adds"] > 0 and result["predict_calls"] > 0 and result["proba_calls"] > 0, result
