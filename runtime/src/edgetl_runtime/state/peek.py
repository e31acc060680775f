"""Which precision an existing enrolment state already holds features of, read without opening it for writing."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from edgetl_runtime.bundle.manifest import Manifest, Precision


def state_precision(state: str | os.PathLike[str], manifest: Manifest) -> Precision | None:
    """The precision of this bundle whose model has features for the most enrolled samples, if any."""
    found = state_precisions(state, manifest)
    return found[0] if found else None


def state_precisions(state: str | os.PathLike[str], manifest: Manifest) -> tuple[Precision, ...]:
    """The precisions of this bundle whose models have features for the most enrolled samples (ties: all).

    ``precision="best"`` is measured on the device and could change between loads (another thread
    count, another CPU). A state serves every precision, but one it has no features for must re-run the
    backbone on every kept image first, so ``best`` keeps to the precisions the state is already using;
    when several have every feature (a one-off ``--precision fp32`` command computed them), ``best``
    means the fastest of those, so a one-off command never changes what the device runs next.
    Read-only (``immutable``: no -wal/-shm files appear) and best-effort: anything unreadable is left to
    the full checks of :class:`FeatureStore`.
    """
    path = Path(state)
    if not path.is_file():
        return ()
    counts = _read_counts(path, "mode=ro&immutable=1")  # creates no -wal/-shm files...
    if not counts and Path(f"{path}-wal").exists():  # ...but cannot see a WAL another process still holds
        counts = _read_counts(path, "mode=ro")
    return ranked_precisions(counts, manifest)


def ranked_precisions(counts: list[tuple[str, int]], manifest: Manifest) -> tuple[Precision, ...]:
    """Of ``counts`` (model digest, samples with features), the bundle's precisions with the most (ties: all)."""
    by_digest = {manifest.members[p.member].sha256: p for p in manifest.precisions if p.member in manifest.members}
    ranked = sorted(((n, i, by_digest[d]) for i, (d, n) in enumerate(counts) if d in by_digest), reverse=True)
    return tuple(p for n, _, p in ranked if n == ranked[0][0])


def feature_counts(con: sqlite3.Connection) -> list[tuple[str, int]]:
    """(model digest, enrolled samples it has features for), first-used order; schema 1 names its one model in
    meta."""
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "models" in tables:
        return [(str(d), int(n)) for d, n in con.execute(_COUNTS)]
    row = con.execute("SELECT value FROM meta WHERE key = 'bundle_digest'").fetchone()
    return [(str(row[0]), 1)] if row else []


_COUNTS = (
    "SELECT m.model_digest, count(s.id) FROM models m JOIN features f ON f.model = m.key "
    "JOIN samples s ON s.image = f.image GROUP BY m.key ORDER BY m.first_used"
)


def _read_counts(path: Path, mode: str) -> list[tuple[str, int]]:
    """(model digest, enrolled samples it has features for); schema 1 names its one model in meta."""
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True, timeout=1.0)
        try:
            con.execute("PRAGMA trusted_schema=OFF")
            return feature_counts(con)
        finally:
            con.close()
    except (sqlite3.Error, ValueError, TypeError):
        return []
