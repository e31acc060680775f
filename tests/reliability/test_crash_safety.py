"""SIGKILL a process that writes the state: every reopened state is healthy and lost nothing.

A child that enrols, removes and saves in a loop: a quarter of the trials kill during start-up (schema
creation), a quarter inside a remove (by id or by label, its transaction held open), the rest at random.
What state schema 2 added is killed too: re-extracting features for a second model, and the in-place upgrade
of a schema-1 file; either way the reopened state is healthy and holds every sample.

``EDGETL_STRESS_TRIALS`` sets the number of kills per test (CI default 5; benchmarks/stress.py runs >= 200).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from edgetl_runtime.state.schema import SCHEMA_V1, statements
from edgetl_runtime.state.store import FeatureStore

from ._support import account, crash_trial, env_int

pytestmark = pytest.mark.runtime

TRIALS = env_int("EDGETL_STRESS_TRIALS", 5)


# ---------------------------------------------------------------------------------------------- enrol, remove, save


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


# ---------------------------------------------------------------------------------------------- second model, upgrade


D = 16
MODEL_A, MODEL_B = "a" * 64, "b" * 64


def _store(path: Path, digest: str) -> FeatureStore:
    return FeatureStore(path, model_digest=digest, feature_dim=D, preprocess_key="p")


def _rows(path: Path) -> list[tuple[int, str, str]]:
    con = sqlite3.connect(path)
    try:
        rows = con.execute("SELECT id, label, image FROM samples ORDER BY id").fetchall()
        return [(int(i), str(label), str(image)) for i, label, image in rows]
    finally:
        con.close()


_REEXTRACT_CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from edgetl_runtime.state.store import FeatureStore

    store = FeatureStore(sys.argv[1], model_digest="b" * 64, feature_dim=16, preprocess_key="p")
    print("OPEN", flush=True)
    for _, _, key, kept in store.images.samples_without_features():
        pixels = store.images.kept_pixels([key])[key]
        store.images.add_model_features({key: np.full(16, float(pixels.mean()), np.float32)})
        print("F", key, flush=True)  # durable once add_model_features returned
        time.sleep(0.005)  # a device's backbone run: the parent's kill lands while the next one is under way
    print("DONE", flush=True)
    """
)


@pytest.mark.parametrize("trial", range(TRIALS))
def test_sigkill_while_re_extracting_for_another_model_keeps_every_sample(tmp_path: Path, trial: int) -> None:
    path = tmp_path / "state.sqlite"
    rng = np.random.default_rng(trial)
    images = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(120)]
    with _store(path, MODEL_A) as store:
        ids = store.add_samples([f"{i:064x}" for i in range(120)], ["x", "y"] * 60, rng.normal(size=(120, D)), images)
        before_a = store.samples()[2]
    child = subprocess.Popen(
        [sys.executable, "-c", _REEXTRACT_CHILD, str(path)], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert child.stdout is not None
    lines = [child.stdout.readline().strip()]  # OPEN: the model is registered
    wanted = 1 + 23 * trial % 110  # kill after this many features were stored: always mid-way
    while sum(line.startswith("F ") for line in lines) < wanted:
        lines.append(child.stdout.readline().strip())
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    lines += [line.strip() for line in child.stdout]
    done = {line.split()[1] for line in lines if line.startswith("F ")}
    with _store(path, MODEL_B) as store:
        assert store.integrity_check() == []
        assert len(store) == 120 and sorted(r[0] for r in _rows(path)) == ids
        have = set(store.samples_with_keys()[2])
        assert done <= have, f"{len(done - have)} features returned by add_model_features were lost"
        assert {key for _, _, key, _ in store.images.samples_without_features()} == {
            f"{i:064x}" for i in range(120)
        } - have
    with _store(path, MODEL_A) as store:  # the first model's features are untouched
        np.testing.assert_array_equal(store.samples()[2], before_a)
    assert lines[0] == "OPEN" and len(have) >= len(done) >= wanted, (lines[:3], len(done), len(have))


def _v1_file(path: Path, samples: int) -> tuple[list[tuple[int, str]], np.ndarray]:
    """A schema-1 state as edgetl 0.1 wrote it, large enough that its upgrade takes a while."""
    rng = np.random.default_rng(0)
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")  # as edgetl_runtime 0.1 left every state
    for statement in statements(SCHEMA_V1):
        con.execute(statement)
    meta = {"schema_version": "1", "bundle_digest": MODEL_A, "feature_dim": str(D), "preprocess_key": "p"}
    con.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
    keys = [f"{i:064x}" for i in range(samples)]
    vectors = rng.normal(size=(samples, D)).astype("<f4")
    con.executemany(
        "INSERT INTO features VALUES (?, ?)", [(k, v.tobytes()) for k, v in zip(keys, vectors, strict=True)]
    )
    con.executemany(
        "INSERT INTO samples (label, feature_key) VALUES (?, ?)", [(f"c{i % 7}", k) for i, k in enumerate(keys)]
    )
    con.commit()
    rows = [(int(i), str(label)) for i, label in con.execute("SELECT id, label FROM samples ORDER BY id")]
    con.close()
    return rows, vectors.astype(np.float32)


_UPGRADE_CHILD = textwrap.dedent(
    """
    import sys, time
    from edgetl_runtime.state import database as state_db
    from edgetl_runtime.state.store import FeatureStore

    if sys.argv[2:] == ["hold"]:  # every upgrade statement has run; COMMIT has not
        real = state_db.migrate_v1

        def held(*args):
            real(*args)
            print("MIGRATED", flush=True)
            time.sleep(5)

        state_db.migrate_v1 = held
    print("START", flush=True)
    FeatureStore(sys.argv[1], model_digest="a" * 64, feature_dim=16, preprocess_key="p").close()
    print("UPGRADED", flush=True)
    """
)


@pytest.mark.parametrize("trial", range(TRIALS))
def test_sigkill_during_the_schema_1_upgrade_leaves_version_1_or_2_never_half(tmp_path: Path, trial: int) -> None:
    """Trial 0 kills after every upgrade statement ran, before COMMIT; the others at a random time across the
    ~0.12 s upgrade."""
    path = tmp_path / "v1.sqlite"
    expected, vectors = _v1_file(path, 20_000)
    argv = [sys.executable, "-c", _UPGRADE_CHILD, str(path), *(["hold"] if trial == 0 else [])]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "START"
    if trial == 0:
        assert child.stdout.readline().strip() == "MIGRATED"
    else:
        time.sleep(float(np.random.default_rng(trial).uniform(0.0, 0.15)))
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    con = sqlite3.connect(path)
    version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    con.close()
    assert version in (("1",), ("2",))
    if trial == 0:
        assert version == ("1",)  # killed inside the transaction: nothing of it survives
    with _store(path, MODEL_A) as store:  # upgrades now if the kill came first
        assert store.integrity_check() == []
        ids, labels, features = store.samples()
        assert list(zip(ids.tolist(), labels.tolist(), strict=True)) == expected
        np.testing.assert_array_equal(features, vectors)  # every vector, bit for bit
