"""The checks a state file passes before anything in it runs: SQLite's page check and the exact schema."""

from __future__ import annotations

import sqlite3

from edgetl_runtime.errors import StateError
from edgetl_runtime.state.errors import _FIX_CORRUPT, _FIX_SCHEMA
from edgetl_runtime.state.image_policy import ImageKeeping
from edgetl_runtime.state.schema import (
    SCHEMA,
    SCHEMA_V1,
    SCHEMA_VERSION,
    TABLES,
    TABLES_V1,
    SchemaObjects,
    schema_problems,
)

__all__ = ["check_schema", "quick_check", "read_meta"]


def quick_check(con: sqlite3.Connection, where: str) -> None:
    """SQLite's quick_check of every page, except the kept images' (the bulk of the file: hundreds of
    milliseconds per load on a device's flash); their blobs are checked as they are decoded, and by
    ``integrity_check``. SQLite before 3.33 cannot check one table: it checks the whole file."""
    tables = [str(r[0]) for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    if "images" in tables and sqlite3.sqlite_version_info >= (3, 33, 0):
        quoted = ['"' + name.replace('"', '""') + '"' for name in tables if name != "images"]
        checks = [f"PRAGMA quick_check({name})" for name in quoted]
    else:
        checks = ["PRAGMA quick_check"]
    problems = [row[0] for check in checks for row in con.execute(check) if row[0] != "ok"]
    if problems:
        raise StateError(f"State database {where!r} failed quick_check: {problems[:5]}. Fix: {_FIX_CORRUPT}.")


def check_schema(con: sqlite3.Connection, where: str, objects: SchemaObjects) -> int:
    """Refuse anything but the exact edgetl schema (SQL text of every table, index, trigger, view), then
    check meta; returns the schema version (1: to upgrade)."""
    tables = {name for kind, name in objects if kind == "table"}
    if not (TABLES <= tables or TABLES_V1 <= tables):
        raise StateError(
            f"{where!r} is a SQLite database but not edgetl state (tables: {sorted(tables)}). "
            "Fix: pass a new state path; do not point the store at another application's database."
        )
    meta = read_meta(con)
    version = 1 if meta.get("schema_version") == "1" else SCHEMA_VERSION
    if meta.get("schema_version") not in ("1", str(SCHEMA_VERSION)):
        raise StateError(
            f"State database {where!r} has schema_version {meta.get('schema_version')!r}, but this "
            f"edgetl_runtime reads versions 1 and {SCHEMA_VERSION}. Fix: upgrade edgetl-runtime, or use a new "
            "state path."
        )
    # quick_check does not read the schema text, and a trigger or a missing constraint only acts at the
    # first write: compare every object's SQL with the schema this version creates before anything runs.
    problems = schema_problems(objects, SCHEMA_V1 if version == 1 else SCHEMA)
    if problems:
        raise StateError(
            f"State database {where!r} does not hold the edgetl schema (schema_version {version}); "
            f"nothing in it was run: {'; '.join(problems[:5])}. Fix: {_FIX_SCHEMA}."
        )
    needed = ("bundle_digest", "feature_dim", "preprocess_key") if version == 1 else ("image_policy",)
    missing = [k for k in needed if k not in meta]
    if missing or (version == 1 and not str(meta["feature_dim"]).isdigit()):
        raise StateError(f"State database {where!r} has damaged meta (missing {missing}). Fix: {_FIX_CORRUPT}.")
    if version == SCHEMA_VERSION:
        try:
            ImageKeeping.from_text(str(meta["image_policy"]))
        except StateError as exc:
            raise StateError(
                f"State database {where!r}: {exc} The enrolments are intact. Fix: set it with the sqlite3 tool "
                "(UPDATE meta SET value = 'thumbnail:384' WHERE key = 'image_policy'), or restore a backup."
            ) from None
    return version


def read_meta(con: sqlite3.Connection) -> dict[str, object]:
    return dict(con.execute("SELECT key, value FROM meta").fetchall())
