"""Device state beside a bundle: enrolled samples, the images they came from, and each model's features, in SQLite.

The head is refit from :meth:`FeatureStore.samples` on load, so this database is the only source of
truth on a device. It uses stdlib ``sqlite3`` in WAL mode with one transaction per enrolment, so a
crash or power loss never leaves half an enrolment behind, and any SQLite tool can inspect it.
A sample is a label and an image hash; what the image looked like is kept as pixels (a thumbnail by
default, see :mod:`edgetl_runtime.kept_images`) so that any model, another precision of the bundle or a
re-exported bundle, can compute its features on demand. Features are float32 little-endian BLOBs, one
row per image and model; nothing is pickled.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime.arguments import LABEL_RULE, check_ids, check_label, label_problem
from edgetl_runtime.errors import InputError, StateError, StateWriteError, raise_all
from edgetl_runtime.kept_images import ImageKeeping
from edgetl_runtime.state_db import _FIX_CORRUPT
from edgetl_runtime.state_images import KeptImages, _as_float32, in_chunks
from edgetl_runtime.state_schema import model_key

REMOVED_SHIPPED_KEY = "removed_shipped_labels"  # meta row: JSON list of shipped-head classes removed here
BUSY_TIMEOUT_S = 10.0  # how long a write waits for another connection's write lock (tests shorten it)


class FeatureStore(KeptImages):
    """SQLite state beside a bundle: samples (id, label, image), kept images, and features per model.

    One connection guarded by a re-entrant lock serves every thread: the Learner predicts from
    several threads while another enrols, and SQLite's in-memory databases cannot be shared across
    connections anyway. Calls are short, so serialising them costs little. Every feature read or
    written is the *current* model's (the one this store was opened with); other models' features stay
    in the file for when that model is loaded again.

    Args:
        path: database file, created if missing; ``None`` keeps the state in memory.
        model_digest: SHA-256 of the backbone member (one precision of one export) computing features.
        feature_dim: length D of that model's feature vectors.
        preprocess_key: identity of the preprocessing that produced the features.
        precision, backbone: recorded with the model, for people and tools reading the state.
        known_models: model digest -> (precision, backbone) of the bundle's other models, to name the model
            of a schema-1 state when it is upgraded.
        keep_images: what to keep of enrolled images (:class:`ImageKeeping`, ``"thumbnail"``, ``"original"``,
            ``"none"`` or a thumbnail size); None keeps the state's own policy (a new state: 384-px thumbnails).
        max_unenrolled: how many features of images that are *not* enrolled (predicted ones) to keep;
            beyond it (checked every 1 % of it) the oldest are evicted, so months of predictions cannot grow
            the file without bound.
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
        model_digest: str,
        feature_dim: int,
        preprocess_key: str,
        precision: str = "unknown",
        backbone: str = "unknown",
        keep_images: ImageKeeping | str | int | None = None,
        known_models: Mapping[str, tuple[str, str]] | None = None,
        max_unenrolled: int = 10_000,
        busy_timeout: float | None = None,
    ) -> None:
        if not isinstance(feature_dim, int) or feature_dim <= 0:
            raise InputError(f"feature_dim must be a positive int, got {feature_dim!r}")
        if not isinstance(max_unenrolled, int) or max_unenrolled < 0:
            raise InputError(f"max_unenrolled must be an int >= 0, got {max_unenrolled!r}")
        self.max_unenrolled = max_unenrolled
        self.path = None if path is None else os.fspath(path)
        self.model_digest = model_digest
        self.feature_dim = feature_dim
        self.preprocess_key = preprocess_key
        self.precision, self.backbone = precision, backbone
        self.requested_policy = None if keep_images is None else ImageKeeping.parse(keep_images)
        self.known_models = {model_digest: (precision, backbone), **(known_models or {})}
        self.model = model_key(model_digest, preprocess_key)
        self.busy_timeout = float(BUSY_TIMEOUT_S if busy_timeout is None else busy_timeout)
        self._warned_uncached = False
        self._cached_since_eviction = max_unenrolled  # the first cache write evicts: a one-shot process too
        self._unwritten = {}
        super().__init__()
        self._connect()

    def _decode(self, blob: bytes, key: str) -> npt.NDArray[np.float32]:
        if not isinstance(blob, bytes) or len(blob) != 4 * self.feature_dim:
            size = len(blob) if isinstance(blob, (bytes, str)) else type(blob).__name__
            raise StateError(
                f"Cached feature {key!r} has {size} bytes, expected {4 * self.feature_dim} "
                f"(feature_dim {self.feature_dim} x float32). Fix: {_FIX_CORRUPT}."
            )
        return np.frombuffer(blob, dtype="<f4").astype(np.float32)  # (D,) float32, writable copy

    def get_features(self, keys: Sequence[str]) -> dict[str, npt.NDArray[np.float32]]:
        """Look image hashes up in this model's features; returns hits only, each a (D,) float32 array."""
        unique = list(dict.fromkeys(keys))
        out = {k: self._unwritten[k] for k in unique if k in self._unwritten}
        with self._reading():
            db = self._db
            for chunk, marks in in_chunks(unique):
                query = f"SELECT image, vec FROM features WHERE model = ? AND image IN ({marks})"
                for key, blob in db.execute(query, [self.model, *chunk]):
                    out[key] = self._decode(blob, key)
        return out

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
        if self.read_only or not self.model_registered:
            return False
        try:
            with self._writing("Caching features in", durable=False):  # derived data: losing it costs a rerun
                self._upsert(keys, vectors)
                self._cached_since_eviction += len(keys)
                if self._cached_since_eviction >= max(1, self.max_unenrolled // 100):
                    self._evict_unenrolled()
        except StateWriteError as exc:
            if not self._warned_uncached:
                self._warned_uncached = True
                warnings.warn(f"Features are not cached: {exc}", RuntimeWarning, stacklevel=2)
            return False
        return True

    def _evict_unenrolled(self) -> None:
        """Drop the oldest cached features (any model) of images no sample uses, beyond ``max_unenrolled``.

        Counting them scans the features (4.1 ms at 5k samples and 10k cached), so it runs at a store's first
        cache write (a one-shot ``edgetl-device predict`` process too) and then once per 1 % of
        ``max_unenrolled`` new rows: the cache overshoots its bound by at most that much per open store.
        """
        self._cached_since_eviction = 0
        db = self._db
        unenrolled = "FROM features f WHERE NOT EXISTS (SELECT 1 FROM samples s WHERE s.image = f.image)"
        (count,) = db.execute(f"SELECT count(*) {unenrolled}").fetchone()
        excess = count - self.max_unenrolled
        if excess > 0:
            db.execute(
                f"DELETE FROM features WHERE rowid IN (SELECT f.rowid {unenrolled} ORDER BY f.rowid LIMIT ?)", (excess,)
            )

    def add_samples(
        self,
        keys: Sequence[str],
        labels: Sequence[str],
        features: npt.NDArray[np.floating],
        images: Sequence[npt.NDArray[np.uint8]] | None = None,
    ) -> list[int]:
        """Enrol samples: their features, what the image policy keeps of ``images`` (``(H, W, 3)`` uint8, one
        per key), and one sample row per key, all in one transaction.

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
        if images is not None and len(images) != len(keys):
            problems.append(f"got {len(images)} images for {len(keys)} keys; pass one image per key, or none")
        problems += [f"label #{i}: {p} ({LABEL_RULE})" for i, p in enumerate(map(label_problem, labels)) if p][:20]
        raise_all(InputError, problems, "Cannot enrol samples")
        if not keys:
            return []
        names = [check_label(label) for label in labels]  # NFC: one spelling per class
        kept = self._encode_kept(keys, images)  # before the transaction: encoding a photo takes milliseconds
        with self._writing("Enrolling into"):
            stored = self._read_policy(self._db)
            if stored != self.image_policy:  # another process changed it (forget_images) since this one opened
                self.image_policy = stored
                kept = self._encode_kept(keys, images)
            if not self.model_registered:  # a model first seen while the state was read-only
                self._register_model(self._db)
            self._upsert(keys, vectors)
            self._keep_images(keys, kept)
            return [self._insert_sample(key, name) for key, name in zip(keys, names, strict=True)]

    def _insert_sample(self, key: str, label: str) -> int:
        row = self._db.execute("INSERT INTO samples (label, image) VALUES (?, ?) RETURNING id", (label, key)).fetchone()
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
        :meth:`removed_shipped_labels`). The kept pixels of images no sample uses any more are deleted (and
        overwritten: ``secure_delete``); their features stay as a cache that eviction ages out.
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
            else:
                unknown = sorted(set(wanted) - self._existing_ids(wanted))
                if unknown:
                    raise InputError(
                        f"Unknown sample ids {unknown[:20]}; {len(self)} samples are enrolled, labels {self.labels()}. "
                        "Fix: pass ids returned by add_samples() or listed by samples()."
                    )
                db.executemany("DELETE FROM samples WHERE id = ?", [(i,) for i in wanted])
                removed = len(wanted)
            dropped = self._drop_unused_images()
        if dropped:
            self.truncate_wal("The removed samples' images")
        return int(removed)

    def _existing_ids(self, ids: list[int]) -> set[int]:
        found: set[int] = set()
        for chunk, marks in in_chunks(ids):
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
        """Like :meth:`samples`, with each sample's image hash (what duplicates and merges are found by).

        Only samples this model has features for; :meth:`samples_without_features` lists the others.
        """
        with self._reading():
            rows = self._db.execute(
                "SELECT s.id, s.label, f.vec, s.image FROM samples s LEFT JOIN features f "
                "ON f.image = s.image AND f.model = ? ORDER BY s.id",
                (self.model,),
            ).fetchall()
        rows = [(i, label, blob if blob is not None else self._unwritten.get(key), key) for i, label, blob, key in rows]
        rows = [r for r in rows if r[2] is not None]
        for sample_id, label, blob, key in rows:
            if isinstance(blob, np.ndarray):
                continue
            if not (isinstance(sample_id, int) and isinstance(label, str) and isinstance(blob, bytes)):
                raise StateError(
                    f"Sample {sample_id!r} has a damaged row (label {type(label).__name__}, features "
                    f"{type(blob).__name__}). Fix: {_FIX_CORRUPT}."
                )
            if len(blob) != 4 * self.feature_dim:
                self._decode(blob, key)  # raises the StateError that names the bad row
        ids = np.array([r[0] for r in rows], dtype=np.int64)  # (N,)
        labels = np.array([r[1] for r in rows], dtype=np.str_)  # (N,)
        flat = b"".join(r[2].astype("<f4").tobytes() if isinstance(r[2], np.ndarray) else r[2] for r in rows)
        feats = np.frombuffer(flat, dtype="<f4").astype(np.float32).reshape(len(rows), self.feature_dim)  # (N, D)
        return ids, labels, [str(r[3]) for r in rows], feats

    def seen_features(self, limit: int | None = None) -> npt.NDArray[np.float32]:
        """This model's cached features of images seen but not enrolled (the prediction cache), newest first,
        at most ``limit`` (default ``max_unenrolled``): ``(M, D)`` float32, the unlabelled pool the head adapts to.
        """
        n = self.max_unenrolled if limit is None else int(limit)
        with self._reading():
            rows = self._db.execute(
                "SELECT f.vec FROM features f WHERE f.model = ? AND NOT EXISTS "
                "(SELECT 1 FROM samples s WHERE s.image = f.image) ORDER BY f.rowid DESC LIMIT ?",
                (self.model, n),
            ).fetchall()
        blobs = [r[0] for r in rows if isinstance(r[0], bytes) and len(r[0]) == 4 * self.feature_dim]
        return np.frombuffer(b"".join(blobs), dtype="<f4").astype(np.float32).reshape(len(blobs), self.feature_dim)

    def labels(self) -> list[str]:
        """Sorted distinct labels of the enrolled samples."""
        with self._reading():
            return [r[0] for r in self._db.execute("SELECT DISTINCT label FROM samples ORDER BY label")]

    def enrolled_labels(self, keys: Sequence[str]) -> dict[str, list[str]]:
        """Labels under which each image hash in ``keys`` is already enrolled (keys not enrolled are absent).

        A sample upgraded from schema 1 is known by its schema-1 key under the model that made it, which is
        looked up too, whatever model runs now.
        """
        keys = list(dict.fromkeys(keys))
        alias = self.legacy_keys(keys)
        lookup = [*keys, *alias]
        found: dict[str, list[str]] = {}
        with self._reading():
            for chunk, marks in in_chunks(lookup):
                query = f"SELECT image, label FROM samples WHERE image IN ({marks}) ORDER BY id"
                for key, label in self._db.execute(query, chunk):
                    found.setdefault(alias.get(str(key), str(key)), []).append(str(label))
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
            f"FeatureStore({self.path or ':memory:'!r}, model={self.precision} {self.model_digest[:12]}…, "
            f"dim={self.feature_dim}, images={self.image_policy.to_text()})"
        )
