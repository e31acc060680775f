"""The enrolment state's SQLite schema, the exact-text check that refuses anything else, and the upgrade
from schema 1.

Schema 2 separates what a sample *is* (a label and an image, kept as pixels or not) from what a model
*makes* of it (features, one row per image and model). One state therefore serves every precision of a
bundle and outlives a re-export: a model it has not seen computes its features from the kept pixels.
Schema 1 bound the whole file to one model's digest and kept features only; it is upgraded in place, in
one transaction, its samples becoming features-only samples of the model that made them.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import sqlite3

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE models (
    key TEXT PRIMARY KEY,  -- model_key(model_digest, preprocess_key): one feature space
    model_digest TEXT NOT NULL,
    preprocess_key TEXT NOT NULL,
    precision TEXT NOT NULL,
    backbone TEXT NOT NULL,
    feature_dim INTEGER NOT NULL CHECK (feature_dim > 0),
    first_used TEXT NOT NULL
);
CREATE TABLE images (
    hash TEXT PRIMARY KEY,  -- sha256 of the enrolled pixels and shape (images.image_digest)
    height INTEGER,  -- of the kept pixels, which a thumbnail makes smaller than the original
    width INTEGER,
    pixels BLOB,  -- kept_images.encode_pixels, or NULL: features only
    source_height INTEGER,  -- the image as enrolled (NULL: upgraded from schema 1)
    source_width INTEGER,
    CHECK ((pixels IS NULL AND height IS NULL AND width IS NULL) OR (height > 0 AND width > 0))
);
CREATE TABLE samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: a removed id is never handed out again
    label TEXT NOT NULL,
    image TEXT NOT NULL REFERENCES images(hash) ON DELETE RESTRICT
);
CREATE TABLE features (
    image TEXT NOT NULL,  -- an image hash (predicted images have features but no images row)
    model TEXT NOT NULL REFERENCES models(key) ON DELETE CASCADE,
    vec BLOB NOT NULL,
    PRIMARY KEY (image, model)
);
CREATE INDEX samples_label ON samples(label);
CREATE INDEX samples_image ON samples(image);
CREATE INDEX features_model ON features(model);
"""
SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE features (key TEXT PRIMARY KEY, vec BLOB NOT NULL);
CREATE TABLE samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: a removed id is never handed out again
    label TEXT NOT NULL,
    feature_key TEXT NOT NULL REFERENCES features(key) ON DELETE RESTRICT
);
CREATE INDEX samples_label ON samples(label);
CREATE INDEX samples_feature_key ON samples(feature_key);
"""
TABLES = frozenset({"meta", "models", "images", "samples", "features"})
TABLES_V1 = frozenset({"meta", "features", "samples"})
SchemaObjects = dict[tuple[str, str], tuple[str, "str | None"]]


def model_key(model_digest: str, preprocess_key: str) -> str:
    """Key of one feature space: the same model under another preprocessing makes other features."""
    return hashlib.sha256(f"{model_digest}\0{preprocess_key}".encode()).hexdigest()


def statements(schema: str) -> list[str]:
    """The schema's statements, to run one by one (``executescript`` would COMMIT the caller's transaction)."""
    return [s for s in schema.split(";") if s.strip()]


@functools.lru_cache(maxsize=2)
def expected_objects(schema: str) -> SchemaObjects:
    """(type, name) -> (table, SQL text) of every object ``schema`` creates, as SQLite records it."""
    con = sqlite3.connect(":memory:")
    try:
        for statement in statements(schema):
            con.execute(statement)
        return schema_objects(con)
    finally:
        con.close()


def schema_objects(con: sqlite3.Connection) -> SchemaObjects:
    rows = con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    return {(str(t), str(n)): (str(tbl), sql if sql is None else str(sql)) for t, n, tbl, sql in rows}


def schema_problems(actual: SchemaObjects, schema: str = SCHEMA) -> list[str]:
    """Every difference between a file's schema objects and ``schema``'s, one line each."""
    expected = expected_objects(schema)
    problems = [f"{t} {n!r} is missing" for (t, n) in sorted(expected.keys() - actual.keys())]
    problems += [
        f"{t} {n!r} on {actual[t, n][0]!r} is not part of the edgetl schema: {str(actual[t, n][1])[:120]!r}"
        for (t, n) in sorted(actual.keys() - expected.keys())
    ]
    problems += [
        f"{t} {n!r} differs from the edgetl schema: {str(actual[t, n][1])[:120]!r}"
        for (t, n) in sorted(actual.keys() & expected.keys())
        if actual[t, n] != expected[t, n]
    ]
    return problems


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def migrate_v1(con: sqlite3.Connection, known: dict[str, tuple[str, str]], image_policy: str) -> None:
    """Upgrade a schema-1 state to schema 2, inside the caller's write transaction.

    Schema 1 kept no image hash, so each sample's feature key (unique per image under that model) becomes
    its image identity, with no pixels: the samples keep serving the model that made them, and a model
    that did not (another precision, a new export) cannot re-extract them, which the learner says.

    Args:
        known: model digest -> (precision, backbone) of the bundle being loaded, to name the old model.
        image_policy: the policy new enrolments follow (``ImageKeeping.to_text``).
    """
    meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
    digest, pre, dim = meta["bundle_digest"], meta["preprocess_key"], int(meta["feature_dim"])
    precision, backbone = known.get(digest, ("unknown", "unknown"))
    (sequence,) = con.execute("SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'samples'").fetchone()
    for index in ("samples_label", "samples_feature_key"):  # the new schema reuses samples_label
        con.execute(f"DROP INDEX {index}")
    con.execute("ALTER TABLE samples RENAME TO v1_samples")
    con.execute("ALTER TABLE features RENAME TO v1_features")
    for statement in statements(SCHEMA)[1:]:  # all but meta, which both versions share
        con.execute(statement)
    key = model_key(digest, pre)
    con.execute("INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?)", (key, digest, pre, precision, backbone, dim, now()))
    con.execute("INSERT INTO images (hash) SELECT DISTINCT feature_key FROM v1_samples")
    con.execute("INSERT INTO features (image, model, vec) SELECT key, ?, vec FROM v1_features ORDER BY rowid", (key,))
    con.execute("INSERT INTO samples (id, label, image) SELECT id, label, feature_key FROM v1_samples ORDER BY id")
    con.execute("DROP TABLE v1_samples")
    con.execute("DROP TABLE v1_features")
    # Ids of samples removed under schema 1 are never handed out again: carry the AUTOINCREMENT counter over.
    con.execute("DELETE FROM sqlite_sequence WHERE name = 'samples'")
    if sequence:
        con.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('samples', ?)", (sequence,))
    con.execute("DELETE FROM meta WHERE key IN ('bundle_digest', 'feature_dim', 'preprocess_key')")
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
    con.execute("INSERT INTO meta VALUES ('image_policy', ?)", (image_policy,))
