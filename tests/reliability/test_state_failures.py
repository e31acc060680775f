"""The SQLite state when things go wrong: each SQLite failure is its own typed error with a truthful fix; a
locked, full or read-only state still predicts and loses nothing; a planted trigger is refused and the schema
check accepts exactly what the store creates.

Killing a process mid-write is test_crash_safety.py; hostile state files are cases of test_bad_input_corpus.py.
"""

from __future__ import annotations

import os
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgetl_runtime.errors import (
    StateError,
    StateFullError,
    StateLockedError,
    StateReadOnlyError,
    StateWriteError,
)
from edgetl_runtime.state.store import FeatureStore

from ._support import BLUE, GREEN, RED, load_learner

pytestmark = pytest.mark.runtime


# ---------------------------------------------------------------------------------------------- write errors


def _sqlite_error(text: str, code: int) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError(text)
    exc.sqlite_errorcode = code  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize(
    ("text", "code", "error"),
    [
        ("database is locked", 5, StateLockedError),
        ("attempt to write a readonly database", 8, StateReadOnlyError),
        ("attempt to write a readonly database", 1544, StateReadOnlyError),  # SQLITE_READONLY_DIRECTORY
        ("database or disk is full", 13, StateFullError),
        ("disk I/O error", 10, StateWriteError),
        ("unable to open database file", 14, StateWriteError),
        ("database disk image is malformed", 11, StateError),
    ],
)
def test_each_sqlite_failure_has_its_own_error_and_a_truthful_fix(text: str, code: int, error: type) -> None:
    from edgetl_runtime.state.database import state_error

    for exc in (_sqlite_error(text, code), sqlite3.OperationalError(text)):  # with and without sqlite_errorcode
        got = state_error(exc, "s.sqlite", "Enrolling into", 10.0)
        assert type(got) is error
        advises_delete = "delete the state file" in str(got)
        assert advises_delete == (error is StateError), str(got)  # only real damage is told to delete


def test_a_locked_state_still_opens_and_predicts(reliability_bundle: Path, tmp_path: Path) -> None:
    from edgetl_runtime.state import store as cache

    state = tmp_path / "s.sqlite"
    with load_learner(reliability_bundle, state) as learner:
        learner.add(RED, "red")
    holder = sqlite3.connect(state, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    saved, cache.BUSY_TIMEOUT_S = cache.BUSY_TIMEOUT_S, 0.2
    try:
        with load_learner(reliability_bundle, state) as learner:
            with pytest.warns(RuntimeWarning, match="not cached"):
                assert learner.predict(GREEN[:1]).tolist() == ["red"]
            with pytest.raises(StateLockedError, match="do not delete it"):
                learner.add(GREEN, "green")
    finally:
        cache.BUSY_TIMEOUT_S = saved
        holder.close()
    with load_learner(reliability_bundle, state) as learner:
        assert learner.add(GREEN, "green")  # the lock gone, the same file takes writes again


def test_a_full_disk_is_a_typed_error_that_loses_nothing(reliability_bundle: Path, tmp_path: Path) -> None:
    state = tmp_path / "s.sqlite"
    with load_learner(reliability_bundle, state) as learner:
        learner.add(RED, "red")
        db = learner.store.connection.db
        db.execute(f"PRAGMA max_page_count={db.execute('PRAGMA page_count').fetchone()[0]}")
        many = [np.random.default_rng(i).integers(0, 256, (12, 14, 3), dtype=np.uint8) for i in range(200)]
        with warnings.catch_warnings(), pytest.raises(StateFullError, match="free space"):
            warnings.simplefilter("ignore", RuntimeWarning)
            learner.add(many, "many")
        assert learner.counts() == {"red": 3} and learner.store.integrity_check() == []


@pytest.mark.parametrize("how", ["chmod", "sqlite-read-only-open"])
def test_a_read_only_state_predicts_and_refuses_enrolment_truthfully(
    how: str, reliability_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state SQLite can only open read-only: predict works (features not cached), add is a StateReadOnlyError
    whose fix is chmod, not delete, and the file is byte-for-byte unchanged.

    ``chmod``: the file mode, as a non-root user meets it (root writes through modes, so it is skipped as root).
    ``sqlite-read-only-open``: SQLite's own read-only open (``mode=ro``), which is what SQLite silently falls
    back to for an unwritable file, so the store sees the very same thing.
    """

    state = tmp_path / "s.sqlite"
    with load_learner(reliability_bundle, state) as learner:
        learner.add(RED, "red")
        learner.add(GREEN, "green")
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root writes through file modes; the sqlite-read-only-open case covers the same store path")
        state.chmod(0o444)
    else:
        real_connect = sqlite3.connect

        def read_only(where: str, **kwargs: object) -> sqlite3.Connection:
            if kwargs.pop("uri", False):  # already a URI (the learner's own read-only peek): leave it alone
                return real_connect(where, uri=True, **kwargs)  # type: ignore[arg-type]
            return real_connect(f"file:{where}?mode=ro", uri=True, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(sqlite3, "connect", read_only)  # the one sqlite3 module every connection comes from
    before = state.read_bytes()
    try:
        with load_learner(reliability_bundle, state) as learner:
            assert learner.store.read_only
            assert learner.predict(BLUE[:1] + RED[:1]).tolist()[1] == "red"
            assert learner.store.put_features({"k": np.zeros(16, np.float32)}) is False  # not cached, no error
            with pytest.raises(StateReadOnlyError, match="chmod u\\+w") as info:
                learner.add(BLUE, "blue")
            assert "delete" not in str(info.value)
            with pytest.raises(StateReadOnlyError):
                learner.remove(label="red")
            assert learner.counts() == {"green": 3, "red": 3}
    finally:
        state.chmod(0o644)
    assert state.read_bytes() == before and not Path(f"{state}-journal").exists()


# ---------------------------------------------------------------------------------------------- schema


def test_a_planted_trigger_would_have_eaten_the_row(reliability_bundle: Path, tmp_path: Path) -> None:
    """Control: with the trigger SQLite itself deletes the row add just returned; the store refuses the file."""
    state = tmp_path / "s.sqlite"
    with load_learner(reliability_bundle, state) as learner:
        learner.add(RED, "red")
    con = sqlite3.connect(state)
    con.execute("CREATE TRIGGER eat AFTER INSERT ON samples BEGIN DELETE FROM samples WHERE id = NEW.id; END")
    con.execute("INSERT INTO samples (label, image) SELECT 'x', hash FROM images LIMIT 1")
    assert con.execute("SELECT count(*) FROM samples WHERE label = 'x'").fetchone() == (0,)
    con.commit()
    con.close()
    with pytest.raises(StateError, match="trigger 'eat'") as info:
        load_learner(reliability_bundle, state)
    assert "drop them with the sqlite3 tool" in str(info.value)


def test_the_schema_check_accepts_exactly_what_it_creates(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    FeatureStore(path, model_digest="d", feature_dim=4, preprocess_key="p").close()
    store = FeatureStore(path, model_digest="d", feature_dim=4, preprocess_key="p")  # reopens its own file
    assert store.integrity_check() == []
    store.close()
