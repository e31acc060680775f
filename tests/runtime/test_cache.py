"""FeatureStore: the device's SQLite feature cache and enrolment store."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgetl_runtime.errors import EdgeTLError, InputError, StateError
from edgetl_runtime.state.store import FeatureStore

pytestmark = pytest.mark.runtime

D = 8
DIGEST = "a" * 64
PRE = "pre-v1"


def make(path: Path | str | None = None, **overrides: object) -> FeatureStore:
    kwargs: dict[str, object] = {"model_digest": DIGEST, "feature_dim": D, "preprocess_key": PRE, **overrides}
    return FeatureStore(path, **kwargs)  # type: ignore[arg-type]


def feats(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)  # (n, D)


def snapshot(store: FeatureStore) -> tuple[list[int], list[str], bytes, int]:
    ids, labels, f = store.samples()
    n_features = store.connection.db.execute("SELECT COUNT(*) FROM features").fetchone()[0]
    return ids.tolist(), labels.tolist(), f.tobytes(), n_features


# --- basic behaviour --------------------------------------------------------------------------------


def test_enrol_and_read_back_in_memory() -> None:
    with make() as store:
        f = feats(3)
        ids = store.add_samples(["k1", "k2", "k3"], ["cat", "dog", "cat"], f)
        assert ids == sorted(ids) and len(set(ids)) == 3
        got_ids, labels, got = store.samples()
        assert got_ids.dtype == np.int64 and got_ids.tolist() == ids
        assert labels.tolist() == ["cat", "dog", "cat"]
        assert got.dtype == np.float32 and got.shape == (3, D)
        np.testing.assert_array_equal(got, f)
        got[0, 0] = 42.0  # arrays are writable copies, not views of SQLite buffers
        assert store.labels() == ["cat", "dog"]
        assert store.counts() == {"cat": 2, "dog": 1}
        assert len(store) == 3


def test_empty_store_shapes() -> None:
    with make() as store:
        ids, labels, f = store.samples()
        assert ids.shape == (0,) and labels.shape == (0,) and f.shape == (0, D) and f.dtype == np.float32
        assert store.labels() == [] and store.counts() == {} and len(store) == 0
        assert store.add_samples([], [], np.zeros((0, D))) == []
        assert store.integrity_check() == []


def test_feature_key_depends_on_bundle_and_preprocessing() -> None:
    a = make()
    assert a.images.feature_key("img") == a.images.feature_key("img")
    assert len(a.images.feature_key("img")) == 64
    assert a.images.feature_key("img") != a.images.feature_key("img2")
    assert a.images.feature_key("img") != make(model_digest="b" * 64).images.feature_key("img")
    assert a.images.feature_key("img") != make(preprocess_key="pre-v2").images.feature_key("img")


def test_feature_cache_hits_only_and_chunking() -> None:
    with make() as store:
        f = feats(1200)
        store.put_features({f"k{i}": f[i] for i in range(1200)})  # more keys than one IN (...) chunk
        assert len(store) == 0  # caching does not enrol
        wanted = [f"k{i}" for i in range(0, 1200, 2)] + ["missing", "k0"]
        hits = store.get_features(wanted)
        assert set(hits) == {f"k{i}" for i in range(0, 1200, 2)}
        for i in (0, 600, 1198):
            assert hits[f"k{i}"].dtype == np.float32 and hits[f"k{i}"].shape == (D,)
            np.testing.assert_array_equal(hits[f"k{i}"], f[i])
        assert store.get_features([]) == {}


def test_put_features_overwrites_a_feature_used_by_a_sample() -> None:
    with make() as store:
        store.add_samples(["k"], ["x"], feats(1, 1))
        new = feats(1, 2)[0]
        store.put_features({"k": new})  # an upsert, not a delete+insert that the foreign key would block
        np.testing.assert_array_equal(store.samples()[2][0], new)
        assert store.integrity_check() == []


def test_persists_across_reopen_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with make(path) as store:
        ids = store.add_samples(["k1", "k2"], ["a", "b"], feats(2))
        assert store.connection.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.connection.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    with make(str(path)) as store:
        assert store.samples()[0].tolist() == ids
        assert store.counts() == {"a": 1, "b": 1}
        assert store.integrity_check() == []


# --- opening the wrong or a broken database -----------------------------------------------------------


@pytest.mark.parametrize("override", [{"model_digest": "b" * 64}, {"preprocess_key": "p2"}])
def test_another_model_opens_the_state_and_sees_its_samples_without_features(
    tmp_path: Path, override: dict[str, object]
) -> None:
    path = tmp_path / "state.db"
    with make(path) as store:
        store.add_samples(["k0", "k1"], ["x", "y"], feats(2), images=[np.zeros((4, 5, 3), np.uint8)] * 2)
    with make(path, **override) as other:
        assert len(other) == 2 and other.samples()[0].tolist() == []  # enrolled, but no features for this model
        assert other.images.samples_without_features() == [(1, "x", "k0", True), (2, "y", "k1", True)]
        other.images.add_model_features({"k0": feats(1, seed=5)[0], "k1": feats(1, seed=6)[0]})
        assert other.samples()[0].tolist() == [1, 2]
    with make(path) as store:  # the first model's features are untouched
        np.testing.assert_array_equal(store.samples()[2], feats(2))


def test_the_same_model_with_another_feature_width_is_refused_with_a_fix_that_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with make(path) as store:
        store.add_samples(["k0"], ["x"], feats(1), images=[np.zeros((4, 5, 3), np.uint8)])
        store.add_samples(["k1"], ["y"], feats(1))  # features only: this model's features are the sample
    with pytest.raises(StateError, match=rf"{DIGEST[:12]}.* as 8 wide, but the bundle says 9") as info:
        make(path, feature_dim=D + 1)
    assert isinstance(info.value, ValueError) and isinstance(info.value, EdgeTLError)
    assert "1 enrolled sample(s) exist only as these features" in str(info.value)
    assert "DELETE" not in str(info.value)
    con = sqlite3.connect(path)  # a damaged record (the vectors are 8 wide, as the bundle says)
    con.execute("UPDATE models SET feature_dim = 7")
    con.commit()
    con.close()
    with pytest.raises(StateError, match=r"the record is damaged") as info:
        make(path)
    fix = str(info.value).split("sqlite3 tool (", 1)[1].rsplit(").", 1)[0]
    con = sqlite3.connect(path)  # the fix as the message gives it, in a plain connection
    con.executescript(fix)
    con.close()
    with make(path) as store:
        assert len(store.samples()[0]) == 2 and store.integrity_check() == []


def test_a_width_mismatch_offers_to_drop_features_only_when_images_can_rebuild_them(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with make(path) as store:
        store.add_samples(["k0"], ["x"], feats(1), images=[np.zeros((4, 5, 3), np.uint8)])
    with pytest.raises(StateError, match=r"verify the bundle.*drop that model's features") as info:
        make(path, feature_dim=D + 1)
    fix = str(info.value).split("drop that model's features (", 1)[1].split("): the next load", 1)[0]
    con = sqlite3.connect(path)
    con.executescript(fix)
    con.close()
    with make(path, feature_dim=D + 1) as store:  # the enrolment survived; its features are to be recomputed
        assert len(store) == 1 and store.images.samples_without_features() == [(1, "x", "k0", True)]
        assert store.integrity_check() == []


def test_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not sqlite at all, just some text" * 200)
    with pytest.raises(StateError, match=r"not a readable SQLite database.*Fix"):
        make(path)


def test_corrupt_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with make(path) as store:
        store.add_samples([f"k{i}" for i in range(300)], ["a"] * 300, feats(300))
        store.connection.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 4 * page
    data[2 * page : 4 * page] = b"\xa5" * (2 * page)  # garble b-tree pages, keep the header valid
    path.write_bytes(bytes(data))
    with pytest.raises(StateError, match="Fix"):
        make(path)


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE users (name TEXT)")
    con.commit()
    con.close()
    with pytest.raises(StateError, match="not edgetl state"):
        make(path)


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with make(path) as store:
        store.connection.db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StateError, match="schema_version '99'"):
        make(path)


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="Fix"):
        make(tmp_path / "no" / "such" / "dir" / "state.db")


def test_bad_feature_dim_is_refused() -> None:
    with pytest.raises(InputError, match="feature_dim"):
        make(feature_dim=0)


# --- validation and atomicity ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "labels", "features", "needle"),
    [
        (["a", "b"], ["x", "y"], np.zeros((2, D + 1)), "shape"),
        (["a", "b"], ["x", "y"], np.zeros((2,)), "shape"),
        (["a", "b"], ["x"], np.zeros((2, D)), "all must match"),
        (["a"], ["x"], np.zeros((2, D)), "all must match"),
        (["a", "b"], ["x", ""], np.zeros((2, D)), "label #1"),
        (["a", ""], ["x", "y"], np.zeros((2, D)), "key #1"),
        (["a"], [3], np.zeros((1, D)), "label #0"),
        (["a"], ["x"], [["not", "numbers"]], "numeric"),
    ],
)
def test_add_samples_rejects_bad_input_and_writes_nothing(keys, labels, features, needle) -> None:  # type: ignore[no-untyped-def]
    with make() as store:
        store.add_samples(["keep"], ["old"], feats(1))
        before = snapshot(store)
        with pytest.raises(InputError, match=needle):
            store.add_samples(keys, labels, features)
        assert snapshot(store) == before


def test_add_samples_reports_every_problem_at_once() -> None:
    bad = np.zeros((2, D), dtype=np.float32)
    bad[1, 3] = np.nan
    with make() as store, pytest.raises(InputError) as info:
        store.add_samples(["a", "b"], ["", "y"], bad)
    msg = str(info.value)
    assert "2 problems" in msg and "NaN" in msg and "rows [1]" in msg and "label #0" in msg


def test_put_features_validates() -> None:
    with make() as store:
        with pytest.raises(InputError, match=r"expected \(8,\)"):
            store.put_features({"a": np.zeros(D + 1)})
        with pytest.raises(InputError, match="NaN"):
            store.put_features({"a": np.zeros(D), "b": np.full(D, np.inf)})
        assert store.get_features(["a", "b"]) == {}


def test_failure_midway_through_add_rolls_everything_back(monkeypatch: pytest.MonkeyPatch) -> None:
    with make() as store:
        store.add_samples(["keep"], ["old"], feats(1))
        before = snapshot(store)
        real = FeatureStore._insert_sample
        calls = []

        def flaky(self: FeatureStore, key: str, label: str) -> int:
            calls.append(key)
            if len(calls) == 3:
                raise RuntimeError("simulated crash after two inserts")
            return real(self, key, label)

        monkeypatch.setattr(FeatureStore, "_insert_sample", flaky)
        with pytest.raises(RuntimeError, match="simulated"):
            store.add_samples([f"n{i}" for i in range(5)], ["new"] * 5, feats(5, 3))
        assert len(calls) == 3
        assert snapshot(store) == before
        assert store.get_features([f"n{i}" for i in range(5)]) == {}  # the features upsert was undone too
        monkeypatch.undo()
        assert len(store.add_samples(["n0"], ["new"], feats(1))) == 1  # the connection is usable afterwards


def test_sqlite_error_midway_through_add_rolls_everything_back() -> None:
    with make() as store:
        store.add_samples(["keep"], ["old"], feats(1))
        store.connection.db.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON samples WHEN NEW.label = 'boom' "
            "BEGIN SELECT RAISE(ABORT, 'boom'); END"
        )
        before = snapshot(store)
        with pytest.raises(StateError, match="boom") as info:  # typed, the SQLite error chained
            store.add_samples(["n0", "n1", "n2"], ["ok", "ok", "boom"], feats(3, 4))
        assert isinstance(info.value.__cause__, sqlite3.IntegrityError)
        assert snapshot(store) == before
        assert not store.connection.db.in_transaction


# --- removal -------------------------------------------------------------------------------------------


def test_remove_by_label_and_by_ids() -> None:
    with make() as store:
        ids = store.add_samples(["a1", "a2", "b1", "c1"], ["a", "a", "b", "c"], feats(4))
        assert store.remove(label="a") == 2
        assert store.counts() == {"b": 1, "c": 1}
        assert store.remove(ids=[ids[2], np.int64(ids[2])]) == 1  # type: ignore[list-item]
        assert store.samples()[0].tolist() == [ids[3]]
        assert store.remove(ids=[]) == 0
        assert set(store.get_features(["a1", "a2", "b1"])) == {"a1", "a2", "b1"}  # cache survives removal
        new = store.add_samples(["a1"], ["a"], feats(1))
        assert new[0] > ids[3]  # ids are never reused
        assert store.integrity_check() == []


def test_remove_errors_change_nothing() -> None:
    with make() as store:
        ids = store.add_samples(["a1", "b1"], ["a", "b"], feats(2))
        before = snapshot(store)
        with pytest.raises(InputError, match=r"Unknown label 'zebra'; known labels: \['a', 'b'\]"):
            store.remove(label="zebra")
        with pytest.raises(InputError, match=r"Unknown sample ids \[999\]"):
            store.remove(ids=[ids[0], 999])
        with pytest.raises(InputError, match="exactly one"):
            store.remove()
        with pytest.raises(InputError, match="exactly one"):
            store.remove(label="a", ids=ids)
        with pytest.raises(InputError, match="must be ints"):
            store.remove(ids=["1"])  # type: ignore[list-item]
        assert snapshot(store) == before


# --- integrity and lifecycle ---------------------------------------------------------------------------


def test_integrity_check_finds_our_invariants_broken() -> None:
    with make() as store:
        store.add_samples(["a"], ["x"], feats(1), images=[np.zeros((4, 4, 3), np.uint8)])
        db = store.connection.db
        db.execute("PRAGMA foreign_keys=OFF")
        db.execute("INSERT INTO samples (label, image) VALUES ('x', 'ghost')")
        db.execute("INSERT INTO features VALUES ('short', ?, x'00000000')", (store.model,))
        db.execute("UPDATE images SET pixels = x'0102' WHERE hash = 'a'")
        db.execute("UPDATE meta SET value = 'thumbnail:big' WHERE key = 'image_policy'")
        problems = store.integrity_check()
        assert len(problems) == 4, problems
        assert any("foreign key" in p and "samples" in p for p in problems)
        assert any("short" in p and "has 4 bytes, expected 32" in p for p in problems)
        assert any("kept pixels of a" in p for p in problems)
        assert any("'thumbnail:big' is damaged" in p for p in problems)
        with pytest.raises(StateError, match="'short' has 4 bytes"):
            store.get_features(["short"])
        with pytest.raises(StateError, match=r"kept pixels of image a.* are damaged"):
            store.images.kept_pixels(["a"])


def test_closed_store_raises_state_error(tmp_path: Path) -> None:
    store = make(tmp_path / "s.db")
    store.close()
    store.close()  # idempotent
    with pytest.raises(StateError, match="closed"):
        len(store)
    with pytest.raises(StateError, match="closed"):
        store.add_samples(["a"], ["x"], feats(1))
    assert "s.db" in repr(store)


# --- concurrency and crash safety ----------------------------------------------------------------------


def test_threads_predicting_while_one_enrols(tmp_path: Path) -> None:
    store = make(tmp_path / "state.db")
    stop = threading.Event()
    errors: list[BaseException] = []
    added: list[int] = []

    def enrol() -> None:
        i = 0
        try:
            while not stop.is_set():
                n = 1 + i % 3
                added.extend(store.add_samples([f"e{i}_{j}" for j in range(n)], [f"l{i % 5}"] * n, feats(n, i)))
                i += 1
        except BaseException as exc:
            errors.append(exc)

    def predict(t: int) -> None:
        rng = np.random.default_rng(t)
        try:
            while not stop.is_set():
                keys = [f"p{t}_{int(k)}" for k in rng.integers(0, 50, size=4)]
                vecs = {k: np.full(D, float(hash(k) % 997), dtype=np.float32) for k in keys}
                store.put_features(vecs)
                hits = store.get_features(keys)
                assert set(hits) == set(keys)
                for k in keys:
                    np.testing.assert_array_equal(hits[k], vecs[k])
                store.samples()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=enrol)] + [threading.Thread(target=predict, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert not errors, errors
    assert added and len(set(added)) == len(added)
    assert store.samples()[0].tolist() == sorted(added)
    assert sum(store.counts().values()) == len(store) == len(added)
    assert store.integrity_check() == []
    store.close()


_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from edgetl_runtime.state.store import FeatureStore

    path, digest, dim, pre = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    store = FeatureStore(path, model_digest=digest, feature_dim=dim, preprocess_key=pre)
    rng = np.random.default_rng()
    i = 0
    while True:
        n = 1 + i % 4
        keys = [f"c{i}_{j}" for j in range(n)]
        ids = store.add_samples(keys, [f"l{i % 3}"] * n, rng.standard_normal((n, dim)))
        if i % 2:
            store.put_features({f"x{i}": rng.standard_normal(dim)})
        print(" ".join(map(str, ids)), flush=True)
        i += 1
    """
)


@pytest.mark.parametrize("trial", range(3))
def test_sigkill_during_enrolment_keeps_every_returned_sample(tmp_path: Path, trial: int) -> None:
    path = tmp_path / "state.db"
    make(path).close()  # create it here so the child only appends
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), DIGEST, str(D), PRE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = child.stdout.readline() if child.stdout else ""
        assert first, child.stderr.read() if child.stderr else "child produced no output"
        time.sleep(random.Random(trial).uniform(0.05, 0.4))
    finally:
        child.kill()  # SIGKILL: no cleanup, no atexit, possibly mid-transaction
    # Read through the same buffered reader as readline (communicate() reads the raw pipe and would miss the
    # lines readline had already buffered: on a loaded machine, several).
    out = child.stdout.read() if child.stdout else ""
    child.wait(timeout=10)
    lines = (first + out).split("\n")[:-1]  # the text after the last newline may be a torn write
    returned = [int(tok) for line in lines for tok in line.split()]
    assert returned
    with make(path) as store:
        assert store.integrity_check() == []
        present = set(store.samples()[0].tolist())
        assert set(returned) <= present  # every add that returned survived
        assert len(present) - len(returned) <= 4  # at most one committed add was not yet printed


def test_unenrolled_features_are_evicted_oldest_first_but_enrolled_ones_never() -> None:
    store = FeatureStore(None, model_digest="d", feature_dim=4, preprocess_key="p", max_unenrolled=3)
    vec = np.ones(4, dtype=np.float32)
    store.add_samples(["enrolled"], ["a"], vec[None])
    for i in range(6):  # six predicted images, one at a time
        store.put_features({f"seen{i}": vec * i})
    kept = store.get_features(["enrolled"] + [f"seen{i}" for i in range(6)])
    assert sorted(kept) == ["enrolled", "seen3", "seen4", "seen5"]
    assert store.integrity_check() == []
    with pytest.raises(InputError, match="max_unenrolled"):
        FeatureStore(None, model_digest="d", feature_dim=4, preprocess_key="p", max_unenrolled=-1)


def test_eviction_is_checked_every_hundredth_of_the_bound_and_overshoots_by_no_more() -> None:
    store = FeatureStore(None, model_digest="d", feature_dim=4, preprocess_key="p", max_unenrolled=500)
    for i in range(700):
        store.put_features({f"seen{i}": np.full(4, i, np.float32)})
        (count,) = store.connection.db.execute("SELECT count(*) FROM features").fetchone()
        assert count <= 500 + 5  # checked every 5 new rows
    kept = store.get_features([f"seen{i}" for i in range(700)])
    assert min(int(k[4:]) for k in kept) >= 195 and "seen699" in kept  # the oldest went


def test_one_shot_processes_each_caching_one_prediction_keep_the_cache_bounded(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    for i in range(60):  # sixty `edgetl-device predict one.jpg` runs
        with FeatureStore(path, model_digest="d", feature_dim=4, preprocess_key="p", max_unenrolled=20) as store:
            store.put_features({f"seen{i}": np.full(4, i, np.float32)})
    with make(path, model_digest="d", feature_dim=4, preprocess_key="p") as store:
        assert store.connection.db.execute("SELECT count(*) FROM features").fetchone() == (20,)
