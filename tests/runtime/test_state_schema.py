"""State schema 2: kept-image encoding and policy, and the in-place upgrade of schema-1 files."""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path

import numpy as np
import pytest

from edgetl_runtime.errors import InputError, StateError, StateLockedError, StateReadOnlyError
from edgetl_runtime.state.image_policy import ImageKeeping, KeepMode, decode_pixels, encode_pixels
from edgetl_runtime.state.schema import SCHEMA, SCHEMA_V1, expected_objects, schema_objects, statements
from edgetl_runtime.state.store import FeatureStore

pytestmark = pytest.mark.runtime

D = 4
DIGEST = "d" * 64
PRE = "pre"


# --- kept pixels ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 5, 3), (64, 33, 3), (300, 2, 3)])
def test_pixels_round_trip_exactly(shape: tuple[int, int, int]) -> None:
    image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    blob = encode_pixels(image)
    np.testing.assert_array_equal(decode_pixels(blob, shape[0], shape[1], "x"), image)


def test_smooth_images_compress() -> None:
    ramp = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, :, None], (256, 256, 3))
    assert len(encode_pixels(ramp)) < ramp.nbytes / 50


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-3],  # truncated
        lambda b: b + b"x",  # trailing bytes
        lambda b: zlib.compress(b"\0" * 10),  # another size
        lambda b: b"not zlib at all",
    ],
)
def test_damaged_pixels_are_a_state_error_never_a_wrong_image(damage) -> None:  # type: ignore[no-untyped-def]
    blob = encode_pixels(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(StateError, match="kept pixels of img are damaged"):
        decode_pixels(damage(blob), 4, 4, "img")


def test_a_thumbnail_keeps_the_aspect_and_the_colour() -> None:
    image = np.zeros((300, 400, 3), np.uint8)
    image[...] = (10, 200, 30)
    small = ImageKeeping(KeepMode.THUMBNAIL, 64).shrink(image)
    assert small is not None and small.shape == (64, 85, 3) and small.dtype == np.uint8
    assert (small == (10, 200, 30)).all()
    tiny = np.ones((20, 30, 3), np.uint8)
    assert ImageKeeping(KeepMode.THUMBNAIL, 64).shrink(tiny) is tiny  # already small: kept as is
    assert ImageKeeping(KeepMode.ORIGINAL).shrink(image) is image
    assert ImageKeeping(KeepMode.NONE).shrink(image) is None


@pytest.mark.parametrize(
    ("value", "text"),
    [("thumbnail", "thumbnail:384"), (128, "thumbnail:128"), ("96", "thumbnail:96"), ("Original", "original")],
)
def test_image_policy_parses_and_round_trips(value: object, text: str) -> None:
    policy = ImageKeeping.parse(value)  # type: ignore[arg-type]
    assert policy.to_text() == text and ImageKeeping.from_text(text) == policy


@pytest.mark.parametrize("value", ["everything", 8, True, 3.5, "-5"])
def test_a_bad_image_policy_names_the_choices(value: object) -> None:
    with pytest.raises(InputError, match=r"(?i)thumbnail"):
        ImageKeeping.parse(value)  # type: ignore[arg-type]


# --- upgrading schema 1 --------------------------------------------------------------------------------


def _v1_state(path: Path, digest: str = DIGEST) -> tuple[list[int], np.ndarray]:
    """A schema-1 file as edgetl_runtime 0.1 wrote it: 3 samples (ids 1, 2, 4: id 3 and 5 were removed)."""
    vectors = np.arange(3 * D, dtype="<f4").reshape(3, D)
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")  # as edgetl_runtime 0.1 left every state
    for statement in statements(SCHEMA_V1):
        con.execute(statement)
    meta = {"schema_version": "1", "bundle_digest": digest, "feature_dim": str(D), "preprocess_key": PRE}
    con.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
    keys = ["f" * 63 + str(i) for i in range(3)]
    con.executemany(
        "INSERT INTO features VALUES (?, ?)", [(k, v.tobytes()) for k, v in zip(keys, vectors, strict=True)]
    )
    con.execute("INSERT INTO features VALUES ('cached-prediction', ?)", (vectors[0].tobytes(),))
    for sample_id, (key, label) in zip(
        [1, 2, 3, 4, 5], [(keys[0], "a"), (keys[1], "b"), (keys[0], "a"), (keys[2], "b"), (keys[2], "b")], strict=True
    ):
        con.execute("INSERT INTO samples VALUES (?, ?, ?)", (sample_id, label, key))
    con.execute("DELETE FROM samples WHERE id IN (3, 5)")
    con.commit()
    con.close()
    return [1, 2, 4], vectors


def _store(path: Path, digest: str = DIGEST) -> FeatureStore:
    return FeatureStore(path, model_digest=digest, feature_dim=D, preprocess_key=PRE, precision="int8", backbone="b")


def test_a_schema_1_state_is_upgraded_in_place_keeping_every_sample(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    ids, vectors = _v1_state(path)
    with _store(path) as store:
        got_ids, labels, features = store.samples()
        assert got_ids.tolist() == ids and labels.tolist() == ["a", "b", "b"]
        np.testing.assert_array_equal(features, vectors)
        assert store.integrity_check() == []
        assert store.image_policy.to_text() == "thumbnail:384"  # new enrolments keep thumbnails
        model = store.storage()["models"][0]
        assert (model["precision"], model["backbone"], model["samples_with_features"]) == ("int8", "b", 3)
        new = store.add_samples(["new"], ["c"], np.ones((1, D), np.float32))
        assert new == [6]  # ids removed under schema 1 are not handed out again
        assert schema_objects(store.connection.db) == expected_objects(SCHEMA)
    with _store(path) as store:  # opening again changes nothing
        assert store.samples()[0].tolist() == [*ids, 6]


def test_an_upgraded_sample_is_found_as_a_duplicate_of_its_image_under_any_model(tmp_path: Path) -> None:
    """Schema 1 named a sample by sha256(image hash, model, preprocessing): re-adding that image under the
    same model or another one (the fix the features-only warning gives) must be seen as a duplicate."""
    path = tmp_path / "v1.sqlite"
    _v1_state(path)
    image_hash = "e" * 64
    with _store(path) as store:
        legacy = store.images.feature_key(image_hash)
    con = sqlite3.connect(path)  # the upgraded sample 1 named, as schema 1 did, by its real feature key
    con.execute("PRAGMA foreign_keys=OFF")
    for table, column in (("images", "hash"), ("samples", "image"), ("features", "image")):
        con.execute(f"UPDATE {table} SET {column} = ? WHERE {column} = ?", (legacy, "f" * 63 + "0"))
    con.commit()
    con.close()
    for digest in (DIGEST, "9" * 64):
        with _store(path, digest=digest) as store:
            assert store.enrolled_labels([image_hash, "0" * 64]) == {image_hash: ["a"]}  # sample 1


def test_an_upgraded_state_under_another_model_lists_its_samples_as_not_re_extractable(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    _v1_state(path)
    with _store(path, digest="9" * 64) as store:
        assert store.samples()[0].tolist() == []
        assert [(i, label, kept) for i, label, _, kept in store.images.samples_without_features()] == [
            (1, "a", False),
            (2, "b", False),
            (4, "b", False),
        ]
        assert store.storage()["models"][0]["precision"] == "unknown"  # the old model is not this bundle's


def test_a_read_only_schema_1_state_is_upgraded_in_memory_and_still_predicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "v1.sqlite"
    ids, vectors = _v1_state(path)
    before = path.read_bytes()
    real_connect = sqlite3.connect

    def read_only(where: str, **kwargs: object) -> sqlite3.Connection:  # SQLite's own read-only open (mode=ro)
        if where == ":memory:" or str(where).startswith("file:"):
            return real_connect(where, **kwargs)  # type: ignore[arg-type]
        return real_connect(f"file:{where}?mode=ro", uri=True, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite3, "connect", read_only)  # root ignores file modes; mode=ro does not
    with pytest.warns(RuntimeWarning, match=r"schema 1 and is read-only: it was upgraded in memory"):
        store = _store(path)
    with store:
        assert store.read_only and store.samples()[0].tolist() == ids
        np.testing.assert_array_equal(store.samples()[2], vectors)
        assert store.storage()["models"][0]["features"] == 3  # the cached prediction was not copied
        with pytest.raises(StateReadOnlyError):
            store.add_samples(["new"], ["c"], np.ones((1, D), np.float32))
    assert path.read_bytes() == before


def test_the_upgrade_waits_for_an_older_runtime_to_let_go_and_changes_nothing_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    _v1_state(path)
    older = sqlite3.connect(path)  # an older edgetl_runtime, still running on this state (WAL, as it wrote it)
    older.execute("SELECT count(*) FROM samples").fetchone()
    before = path.read_bytes()
    with pytest.raises(
        StateLockedError, match=r"schema 1.*another process kept it open for 0.2 s.*Nothing was changed"
    ):
        FeatureStore(path, model_digest=DIGEST, feature_dim=D, preprocess_key=PRE, busy_timeout=0.2)
    assert path.read_bytes() == before
    assert older.execute("SELECT count(*) FROM samples").fetchone() == (3,)  # it still reads schema 1
    older.close()
    with _store(path) as store:  # alone now: upgraded
        assert store.samples()[0].tolist() == [1, 2, 4]


def test_the_upgrade_names_the_old_model_from_any_precision_of_the_bundle(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    _v1_state(path)  # enrolled at the bundle's int8 member (DIGEST); loaded now at its fp32 one
    known = {DIGEST: ("int8", "lite0"), "9" * 64: ("fp32", "lite0")}
    with FeatureStore(path, model_digest="9" * 64, feature_dim=D, preprocess_key=PRE, known_models=known) as store:
        names = [(m["precision"], m["backbone"], m["samples_with_features"]) for m in store.storage()["models"]]
        assert names[0] == ("int8", "lite0", 3)


def test_a_tampered_schema_1_state_is_refused_not_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    _v1_state(path)
    con = sqlite3.connect(path)
    con.execute("CREATE TRIGGER t AFTER INSERT ON samples BEGIN DELETE FROM samples; END")
    con.commit()
    con.close()
    with pytest.raises(StateError, match=r"schema_version 1.*trigger 't'"):
        _store(path)
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("1",)


def test_two_new_runtimes_upgrading_at_once_the_second_finds_schema_2_and_carries_on(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    _v1_state(path)
    with _store(path) as first:  # upgraded it, and keeps it open (WAL): leaving WAL is refused to anyone else
        second = sqlite3.connect(path, isolation_level=None)
        assert first.database._leave_wal(second, str(path)) is False  # saw v1 before; v2 now: nothing to do
        second.close()
        assert first.samples()[0].tolist() == [1, 2, 4]


def test_a_table_name_that_needs_quoting_is_named_by_the_schema_check_not_called_damage(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with _store(path) as store:
        store.add_samples(["k"], ["x"], np.ones((1, D), np.float32))
    con = sqlite3.connect(path)
    con.execute('CREATE TABLE "my notes" (text TEXT)')
    con.commit()
    con.close()
    with pytest.raises(StateError, match=r"table 'my notes'.*not part of the edgetl schema.*enrolments are kept"):
        _store(path)


def test_a_state_in_a_read_only_folder_opens_immutable_when_sqlite_cannot_make_its_shm_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As root, folder modes do not apply: the refusal an unprivileged process gets on a read-only mount
    (SQLite cannot create -shm beside a WAL file: the first statement fails read-only) is raised here by the
    first statement of the plain open; the store then opens the file immutable, read-only."""
    from edgetl_runtime.state import database
    from edgetl_runtime.state.checks import quick_check

    path = tmp_path / "s.sqlite"
    with _store(path) as store:
        store.add_samples(["k"], ["x"], np.ones((1, D), np.float32))
    assert not Path(f"{path}-wal").exists()
    real_check = quick_check
    opened: list[str] = []

    def first_statement_fails(con: sqlite3.Connection, where: str) -> None:
        name = con.execute("PRAGMA database_list").fetchone()[2]
        opened.append(name)
        if len(opened) == 1:
            raise sqlite3.OperationalError("attempt to write a readonly database")
        real_check(con, where)

    monkeypatch.setattr(database, "quick_check", first_statement_fails)
    before = path.read_bytes()
    with _store(path) as store:
        assert store.read_only and store.samples()[0].tolist() == [1]
        with pytest.raises(StateReadOnlyError):
            store.add_samples(["k2"], ["x"], np.ones((1, D), np.float32))
    assert len(opened) == 2 and path.read_bytes() == before
