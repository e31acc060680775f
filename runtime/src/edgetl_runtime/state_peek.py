"""Which precision an existing enrolment state was made with, read without opening it for writing."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from edgetl_runtime.manifest import Manifest, Precision


def state_precision(state: str | os.PathLike[str], manifest: Manifest) -> Precision | None:
    """The precision whose model an existing state's features were computed with, if it is this bundle's.

    ``precision="best"`` is measured on the device and could change between loads (another thread
    count, another CPU); an enrolment state keeps the precision its cached features belong to.
    Read-only (``immutable``: no -wal/-shm files appear) and best-effort: anything unreadable is left to
    the full checks of :class:`FeatureStore`.
    """
    path = Path(state)
    if not path.is_file():
        return None
    row = _read_digest(path, "mode=ro&immutable=1")  # creates no -wal/-shm files...
    if row is None and Path(f"{path}-wal").exists():  # ...but cannot see a WAL another process still holds
        row = _read_digest(path, "mode=ro")
    digests = {manifest.members[p.member].sha256: p for p in manifest.precisions if p.member in manifest.members}
    return digests.get(row[0]) if row and isinstance(row[0], str) else None


def _read_digest(path: Path, mode: str) -> tuple[object, ...] | None:
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True, timeout=1.0)
        try:
            con.execute("PRAGMA trusted_schema=OFF")
            row: tuple[object, ...] | None = con.execute(
                "SELECT value FROM meta WHERE key = 'bundle_digest'"
            ).fetchone()
            return row
        finally:
            con.close()
    except sqlite3.Error:
        return None
