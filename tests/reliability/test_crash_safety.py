"""SIGKILL a child that enrols, removes and saves in a loop: every reopened state is healthy and lost nothing.

A quarter of the trials kill during start-up (schema creation; the schema-1 upgrade and re-extraction for a
second model are killed in test_crash_state2.py), a quarter inside a remove (by id or by label, its transaction
held open), the rest at random.

``EDGETL_STRESS_TRIALS`` sets the number of kills (CI default 5; benchmarks/stress.py runs >= 200).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ._support import account, crash_trial, env_int

pytestmark = pytest.mark.runtime

TRIALS = env_int("EDGETL_STRESS_TRIALS", 5)


@pytest.mark.parametrize("trial", range(TRIALS))
def test_sigkill_loses_no_returned_sample(reliability_bundle: Path, tmp_path: Path, trial: int) -> None:
    result = crash_trial(reliability_bundle, tmp_path / "state.sqlite", seed=trial)
    assert result["corrupt"] == 0, result["problems"]
    assert result["lost"] == 0 and result["resurrected"] == 0, result["problems"]


@pytest.mark.parametrize("seed", [1, 5])  # seed % 4 == 1: aimed at a remove (5: remove(label=...))
def test_sigkill_inside_a_remove_loses_nothing(reliability_bundle: Path, tmp_path: Path, seed: int) -> None:
    result = crash_trial(reliability_bundle, tmp_path / "state.sqlite", seed=seed)
    assert result["aimed_remove"] and result["in_remove"] == 1, result["lines"][-3:]
    assert result["corrupt"] == 0 and result["lost"] == 0 and result["resurrected"] == 0, result["problems"]


def test_the_oracle_sees_a_lost_and_a_resurrected_sample(reliability_bundle: Path, tmp_path: Path) -> None:
    """Counts, not claims: delete a returned row and claim a present one was removed; both must be counted."""
    state = tmp_path / "state.sqlite"
    result = crash_trial(reliability_bundle, state, seed=1)  # seed 1 waits for output before the kill
    assert result["returned"] >= 2 and result["lost"] == 0
    lines = list(result["lines"])
    *_, present, victim = (line.split()[1] for line in lines if line.startswith("R "))  # newest: never removed
    con = sqlite3.connect(state)
    con.execute("DELETE FROM samples WHERE id = ?", (int(victim),))
    con.commit()
    con.close()
    tampered = account(reliability_bundle, state, [*lines, f"D {present}"])
    assert tampered["lost"] == 1 and tampered["resurrected"] == 1, tampered
