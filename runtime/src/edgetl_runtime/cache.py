"""Device state beside a bundle: enrolled samples and their cached backbone features, in SQLite.

The head is refit from :meth:`FeatureStore.samples` on load, so this database is the only source of
truth on a device. It uses stdlib ``sqlite3`` in WAL mode with one transaction per enrolment, so a
crash or power loss never leaves half an enrolment behind, and any SQLite tool can inspect it.
Features are float32 little-endian BLOBs; nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime.arguments import LABEL_RULE, check_ids, check_label, label_problem
from edgetl_runtime.errors import InputError, StateError, StateWriteError, raise_all
from edgetl_runtime.state_db import _FIX_CORRUPT, StateDatabase

REMOVED_SHIPPED_KEY = "removed_shipped_labels"  # meta row: JSON list of shipped-head classes removed here
BUSY_TIMEOUT_S = 10.0  # how long a write waits for another connection's write lock (tests shorten it)
_CHUNK = 500  # host parameters per statement; stays under SQLITE_MAX_VARIABLE_NUMBER of old SQLite builds.


def _as_float32(array: object, what: str) -> npt.NDArray[np.float32]:
    try:
        return np.asarray(array, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"{what} must be numeric, got {type(array).__name__} ({exc}). Fix: pass a float array."
        ) from exc


class FeatureStore(StateDatabase):
    """SQLite state beside a bundle: enrolled samples (id, label, feature key) and cached features.

    One connection guarded by a re-entrant lock serves every thread: the Learner predicts from
    several threads while another enrols, and SQLite's in-memory databases cannot be shared across
    connections anyway. Calls are short, so serialising them costs little.

    Args:
        path: database file, created if missing; ``None`` keeps the state in memory.
        bundle_digest: digest of the bundle this state belongs to.
        feature_dim: length D of every feature vector.
        preprocess_key: identity of the preprocessing that produced the features.
        max_unenrolled: how many features of images that are *not* enrolled (predicted ones) to keep;
            beyond it the oldest are evicted, so months of predictions cannot grow the file without bound.
            Enrolled samples' features are never evicted.
        busy_timeout: seconds a write waits for another connection's write lock before
            :class:`StateLockedError` (default :data:`BUSY_TIMEOUT_S`).

    A state file that cannot be written (read-only file, folder or file system) still opens: it can be
    read and predicted from (``read_only`` is True, features are not cached), and enrolling raises
    :class:`StateReadOnlyError`. Each write failure has its own typed error; none advises deleting a
    healthy file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        *,
        bundle_digest: str,
        feature_dim: int,
        preprocess_key: str,
        max_unenrolled: int = 10_000,
        busy_timeout: float | None = None,
    ) -> None:
        if not isinstance(feature_dim, int) or feature_dim <= 0:
            raise InputError(f"feature_dim must be a positive int, got {feature_dim!r}")
        if not isinstance(max_unenrolled, int) or max_unenrolled < 0:
            raise InputError(f"max_unenrolled must be an int >= 0, got {max_unenrolled!r}")
        self.max_unenrolled = max_unenrolled
        self.path = None if path is None else os.fspath(path)
        self.bundle_digest = bundle_digest
        self.feature_dim = feature_dim
        self.preprocess_key = preprocess_key
        self.busy_timeout = float(BUSY_TIMEOUT_S if busy_timeout is None else busy_timeout)
        self._warned_uncached = False
        super().__init__()
        self._connect()

    def feature_key(self, image_hash: str) -> str:
        """Cache key of an image's features: the same image under another bundle or preprocessing misses."""
        # NUL separators keep the three parts from sliding into each other ("ab"+"c" vs "a"+"bc").
        text = "\0".join((image_hash, self.bundle_digest, self.preprocess_key))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def _decode(self, blob: bytes, key: str) -> npt.NDArray[np.float32]:
        if not isinstance(blob, bytes) or len(blob) != 4 * self.feature_dim:
            size = len(blob) if isinstance(blob, (bytes, str)) else type(blob).__name__
            raise StateError(
                f"Cached feature {key!r} has {size} bytes, expected {4 * self.feature_dim} "
                f"(feature_dim {self.feature_dim} x float32). Fix: {_FIX_CORRUPT}."
            )
        return np.frombuffer(blob, dtype="<f4").astype(np.float32)  # (D,) float32, writable copy

    def get_features(self, keys: Sequence[str]) -> dict[str, npt.NDArray[np.float32]]:
        """Look keys up in the cache; returns hits only, each a (D,) float32 array."""
        unique = list(dict.fromkeys(keys))
        out: dict[str, npt.NDArray[np.float32]] = {}
        with self._reading():
            db = self._db
            for start in range(0, len(unique), _CHUNK):
                chunk = unique[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                for key, blob in db.execute(f"SELECT key, vec FROM features WHERE key IN ({marks})", chunk):
                    out[key] = self._decode(blob, key)
        return out

    def _check_vectors(self, keys: Sequence[object], vectors: npt.NDArray[np.float32], what: str) -> list[str]:
        """Collect every problem with keys and a (N, D) array, so the caller raises once."""
        problems = [
            f"{what} key #{i} must be a non-empty str, got {k!r}"
            for i, k in enumerate(keys)
            if not k or not isinstance(k, str)
        ]
        if vectors.ndim != 2 or vectors.shape[1] != self.feature_dim:
            problems.append(f"{what} features have shape {vectors.shape}, expected (N, {self.feature_dim})")
        elif not np.isfinite(vectors).all():
            bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
            problems.append(f"{what} features rows {bad[:10].tolist()} contain NaN or inf; expected finite values")
        return problems

    def _upsert(self, keys: Sequence[str], vectors: npt.NDArray[np.float32]) -> None:
        rows = [(k, v.tobytes()) for k, v in zip(keys, np.asarray(vectors, dtype="<f4"), strict=True)]  # v: (D,) <f4
        # Upsert, not INSERT OR REPLACE: REPLACE deletes the row first, which a sample referencing it forbids.
        self._db.executemany("INSERT INTO features VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET vec=excluded.vec", rows)

    def put_features(self, items: Mapping[str, npt.NDArray[np.floating]]) -> bool:
        """Cache features without enrolling them, in one transaction; returns whether they were cached.

        The cache is derived data, so caching is best effort: a read-only state skips it, and a failed
        write (locked, disk full) warns once and is skipped, so a prediction never fails for its cache.
        """
        if not items:
            return True
        keys = list(items)
        dim = self.feature_dim
        problems = [
            f"feature for {k!r} has shape {np.shape(v)}, expected ({dim},)"
            for k, v in items.items()
            if np.shape(v) != (dim,)
        ]
        raise_all(InputError, problems, "Cannot cache features")
        vectors = np.stack([_as_float32(items[k], f"feature for {k!r}") for k in keys])  # (N, D) float32
        raise_all(InputError, self._check_vectors(keys, vectors, "cached"), "Cannot cache features")
        if self.read_only:
            return False
        try:
            with self._writing("Caching features in", durable=False):  # derived data: losing it costs a rerun
                self._upsert(keys, vectors)
                self._evict_unenrolled()
        except StateWriteError as exc:
            if not self._warned_uncached:
                self._warned_uncached = True
                warnings.warn(f"Features are not cached: {exc}", RuntimeWarning, stacklevel=2)
            return False
        return True

    def _evict_unenrolled(self) -> None:
        """Drop the oldest cached features no sample uses, beyond ``max_unenrolled`` (inside a transaction)."""
        db = self._db
        (enrolled,) = db.execute("SELECT count(DISTINCT feature_key) FROM samples").fetchone()
        (total,) = db.execute("SELECT count(*) FROM features").fetchone()
        excess = total - enrolled - self.max_unenrolled
        if excess > 0:
            db.execute(
                "DELETE FROM features WHERE rowid IN (SELECT rowid FROM features f WHERE NOT EXISTS "
                "(SELECT 1 FROM samples s WHERE s.feature_key = f.key) ORDER BY rowid LIMIT ?)",
                (excess,),
            )

    def add_samples(self, keys: Sequence[str], labels: Sequence[str], features: npt.NDArray[np.floating]) -> list[int]:
        """Enrol samples: cache their features and add one sample row per key, all in one transaction.

        Returns:
            The new sample ids, in the order of ``keys``. On any error nothing is written.
        """
        keys, labels = list(keys), list(labels)
        vectors = _as_float32(features, "enrolment features")  # (N, D) float32
        problems = self._check_vectors(keys, vectors, "enrolment")
        if len(labels) != len(keys) or (vectors.ndim >= 1 and vectors.shape[0] != len(keys)):
            problems.append(
                f"got {len(keys)} keys, {len(labels)} labels and {vectors.shape[:1]} feature rows; all must match"
            )
        problems += [f"label #{i}: {p} ({LABEL_RULE})" for i, p in enumerate(map(label_problem, labels)) if p][:20]
        raise_all(InputError, problems, "Cannot enrol samples")
        if not keys:
            return []
        names = [check_label(label) for label in labels]  # NFC: one spelling per class
        with self._writing("Enrolling into"):
            self._upsert(keys, vectors)
            return [self._insert_sample(key, name) for key, name in zip(keys, names, strict=True)]

    def _insert_sample(self, key: str, label: str) -> int:
        row = self._db.execute(
            "INSERT INTO samples (label, feature_key) VALUES (?, ?) RETURNING id", (label, key)
        ).fetchone()
        return int(row[0])

    def remove(
        self,
        *,
        label: str | None = None,
        ids: Sequence[int] | npt.NDArray[np.integer[Any]] | None = None,
        shipped: Collection[str] = (),
    ) -> int:
        """Remove every sample of ``label``, or the samples with ``ids``; returns how many were removed.

        A ``label`` among ``shipped`` (the bundle's head classes) is also recorded as removed in ``meta``, in
        the same transaction, so every later load forgets the shipped class too (see
        :meth:`removed_shipped_labels`). Cached features stay: they are still valid for this bundle and save
        a backbone run if re-enrolled.
        """
        if (label is None) == (ids is None):
            raise InputError(f"remove() needs exactly one of label= or ids=, got label={label!r}, ids={ids!r}")
        name = None if label is None else check_label(label)
        wanted = [] if ids is None else check_ids(ids)
        with self._writing("Removing from") as db:
            if name is not None:
                removed = db.execute("DELETE FROM samples WHERE label = ?", (name,)).rowcount
                if name in shipped:
                    gone = sorted({*self.removed_shipped_labels(), name})
                    db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (REMOVED_SHIPPED_KEY, json.dumps(gone)))
                elif removed == 0:
                    known = sorted({*self.labels(), *(set(shipped) - set(self.removed_shipped_labels()))})
                    raise InputError(f"Unknown label {name!r}; known labels: {known}. Fix: pass one of those.")
                return int(removed)
            unknown = sorted(set(wanted) - self._existing_ids(wanted))
            if unknown:
                raise InputError(
                    f"Unknown sample ids {unknown[:20]}; {len(self)} samples are enrolled, labels {self.labels()}. "
                    "Fix: pass ids returned by add_samples() or listed by samples()."
                )
            db.executemany("DELETE FROM samples WHERE id = ?", [(i,) for i in wanted])
            return len(wanted)

    def _existing_ids(self, ids: list[int]) -> set[int]:
        found: set[int] = set()
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in self._db.execute(f"SELECT id FROM samples WHERE id IN ({marks})", chunk))
        return found

    def removed_shipped_labels(self) -> list[str]:
        """Classes of the bundle's shipped head that this device removed (``remove(label=..., shipped=...)``)."""
        with self._reading():
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (REMOVED_SHIPPED_KEY,)).fetchone()
        if row is None:
            return []
        try:
            labels = json.loads(row[0])
        except (TypeError, ValueError):
            labels = None
        if not isinstance(labels, list) or any(label_problem(v) for v in labels):
            raise StateError(f"meta {REMOVED_SHIPPED_KEY!r} is damaged ({str(row[0])[:80]!r}). Fix: {_FIX_CORRUPT}.")
        return [str(v) for v in labels]

    def samples(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.str_], npt.NDArray[np.float32]]:
        """All enrolled samples in id order: (ids (N,) int64, labels (N,) str, features (N, D) float32)."""
        ids, labels, _, feats = self.samples_with_keys()
        return ids, labels, feats

    def samples_with_keys(
        self,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.str_], list[str], npt.NDArray[np.float32]]:
        """Like :meth:`samples`, with each sample's feature key (what an enrolment export deduplicates by)."""
        with self._reading():
            rows = self._db.execute(
                "SELECT s.id, s.label, f.vec, f.key FROM samples s JOIN features f ON f.key = s.feature_key "
                "ORDER BY s.id"
            ).fetchall()
        for sample_id, label, blob, key in rows:
            if not (isinstance(sample_id, int) and isinstance(label, str) and isinstance(blob, bytes)):
                raise StateError(
                    f"Sample {sample_id!r} has a damaged row (label {type(label).__name__}, features "
                    f"{type(blob).__name__}). Fix: {_FIX_CORRUPT}."
                )
            if len(blob) != 4 * self.feature_dim:
                self._decode(blob, key)  # raises the StateError that names the bad row
        ids = np.array([r[0] for r in rows], dtype=np.int64)  # (N,)
        labels = np.array([r[1] for r in rows], dtype=np.str_)  # (N,)
        flat = np.frombuffer(b"".join(r[2] for r in rows), dtype="<f4")  # (N * D,) little-endian
        feats = flat.astype(np.float32).reshape(len(rows), self.feature_dim)  # (N, D) float32, writable copy
        return ids, labels, [str(r[3]) for r in rows], feats

    def labels(self) -> list[str]:
        """Sorted distinct labels of the enrolled samples."""
        with self._reading():
            return [r[0] for r in self._db.execute("SELECT DISTINCT label FROM samples ORDER BY label")]

    def enrolled_labels(self, keys: Sequence[str]) -> dict[str, list[str]]:
        """Labels under which each of ``keys`` is already enrolled (keys not enrolled are absent)."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, list[str]] = {}
        with self._reading():
            for start in range(0, len(keys), _CHUNK):
                chunk = keys[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT feature_key, label FROM samples WHERE feature_key IN ({marks}) ORDER BY id"
                for key, label in self._db.execute(query, chunk):
                    found.setdefault(str(key), []).append(str(label))
        return found

    def counts(self) -> dict[str, int]:
        """Number of enrolled samples per label."""
        with self._reading():
            return dict(
                self._db.execute("SELECT label, COUNT(*) FROM samples GROUP BY label ORDER BY label").fetchall()
            )

    def __len__(self) -> int:
        with self._reading():
            return int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def integrity_check(self) -> list[str]:
        """SQLite's integrity_check plus our invariants; returns the problems found (empty means healthy)."""
        with self._reading():
            db = self._db
            problems = [f"sqlite: {r[0]}" for r in db.execute("PRAGMA integrity_check") if r[0] != "ok"]
            orphans = db.execute(
                "SELECT s.id, s.feature_key FROM samples s LEFT JOIN features f ON f.key = s.feature_key "
                "WHERE f.key IS NULL"
            ).fetchall()
            problems += [f"sample {i} references missing feature {k!r}" for i, k in orphans[:20]]
            bad = db.execute(
                "SELECT key, length(vec) FROM features WHERE length(vec) != ?", (4 * self.feature_dim,)
            ).fetchall()
            problems += [f"feature {k!r} has {n} bytes, expected {4 * self.feature_dim}" for k, n in bad[:20]]
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            problems += [
                f"meta {k!r} is {meta.get(k)!r}, expected {v!r}"
                for k, v in self._expected_meta().items()
                if meta.get(k) != v
            ]
        return problems

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: changes whenever ANOTHER connection commits to this file."""
        with self._reading():
            return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def samples_token(self) -> tuple[int, int]:
        """(count, sum of ids) of the enrolled samples: ids only grow, so any add or remove changes it."""
        with self._reading():
            count, total = self._db.execute("SELECT count(*), coalesce(sum(id), 0) FROM samples").fetchone()
        return int(count), int(total)

    def __repr__(self) -> str:
        return (
            f"FeatureStore({self.path or ':memory:'!r}, bundle_digest={self.bundle_digest!r}, dim={self.feature_dim})"
        )
