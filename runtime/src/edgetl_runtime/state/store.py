"""Device state beside a bundle: enrolled samples, the images they came from, and each model's features, in SQLite.

The head is refit from :meth:`FeatureStore.samples` on load, so this database is the only source of
truth on a device. It uses stdlib ``sqlite3`` in WAL mode with one transaction per enrolment, so a
crash or power loss never leaves half an enrolment behind, and any SQLite tool can inspect it.
A sample is a label and an image hash; what the image looked like is kept as pixels (a thumbnail by
default, see :mod:`edgetl_runtime.state.image_policy`) so that any model, another precision of the bundle or a
re-exported bundle, can compute its features on demand. Features are float32 little-endian BLOBs, one
row per image and model; nothing is pickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime.arguments import LABEL_RULE, check_ids, check_label, label_problem
from edgetl_runtime.bundle.manifest import Manifest, Precision
from edgetl_runtime.errors import InputError, StateError, raise_all
from edgetl_runtime.preprocess import preprocess_key
from edgetl_runtime.state.connection import StateConnection
from edgetl_runtime.state.database import ModelSpace, StateDatabase
from edgetl_runtime.state.errors import _FIX_CORRUPT
from edgetl_runtime.state.feature_cache import FeatureCache
from edgetl_runtime.state.image_policy import ImageKeeping
from edgetl_runtime.state.images import KeptImages, as_float32, in_chunks

REMOVED_SHIPPED_KEY = "removed_shipped_labels"  # meta row: JSON list of shipped-head classes removed here
BUSY_TIMEOUT_S = 10.0  # how long a write waits for another connection's write lock (tests shorten it)


class FeatureStore:
    """SQLite state beside a bundle: samples (id, label, image), kept images, and features per model.

    Built from its parts: a :class:`StateConnection` (one connection and lock serving every thread), the
    :class:`StateDatabase` that opened it, :class:`KeptImages` and the :class:`FeatureCache`. Every feature
    read or written is the *current* model's (``model_digest`` + ``preprocess_key``, width ``feature_dim``);
    other models' features stay in the file for when that model is loaded again. ``keep_images`` is the
    image policy to use (None: the state's own; a new state keeps 384-px thumbnails); ``known_models`` names
    the bundle's other models (to name a schema-1 file's model when it is upgraded); ``max_unenrolled``
    bounds the features of predicted images kept; ``busy_timeout`` (default :data:`BUSY_TIMEOUT_S`) is how
    long a write waits for another connection. ``path=None`` keeps the state in memory. A file that cannot be
    written still opens read-only (it predicts; enrolling raises :class:`StateReadOnlyError`).
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
        opened: StateDatabase | None = None,
    ) -> None:
        if not isinstance(feature_dim, int) or feature_dim <= 0:
            raise InputError(f"feature_dim must be a positive int, got {feature_dim!r}")
        if not isinstance(max_unenrolled, int) or max_unenrolled < 0:
            raise InputError(f"max_unenrolled must be an int >= 0, got {max_unenrolled!r}")
        self.space = ModelSpace(model_digest, preprocess_key, feature_dim, precision, backbone)
        if opened is not None:  # opened already (a load read which models it has features for)
            self.database, self.connection = opened, opened.connection
            try:
                opened.adopt(self.space)
            except BaseException:
                opened.connection.close()
                raise
        else:
            requested = None if keep_images is None else ImageKeeping.parse(keep_images)
            known = {model_digest: (precision, backbone), **(known_models or {})}
            self.database = self.open_state(path, requested, known, busy_timeout, self.space)
            self.connection = self.database.connection
        self.images = KeptImages(self.database)
        self.cache = FeatureCache(self.images, max_unenrolled)

    @staticmethod
    def open_state(
        path: str | os.PathLike[str] | None,
        requested_policy: ImageKeeping | None,
        known_models: Mapping[str, tuple[str, str]],
        busy_timeout: float | None = None,
        space: ModelSpace | None = None,
    ) -> StateDatabase:
        """Open (create, check, upgrade) the state file; ``space`` adopts a model at once."""
        timeout = float(BUSY_TIMEOUT_S if busy_timeout is None else busy_timeout)
        connection = StateConnection(None if path is None else os.fspath(path), timeout)
        return StateDatabase(connection, requested_policy, known_models, space)

    @classmethod
    def for_bundle(
        cls,
        path: str | os.PathLike[str] | None,
        manifest: Manifest,
        precision: Precision,
        keep_images: ImageKeeping | str | int | None = None,
        opened: StateDatabase | None = None,
    ) -> FeatureStore:
        """The state of ``manifest``'s ``precision`` model; every precision of the bundle is a known model.
        ``opened``: the state opened already (see :mod:`edgetl_runtime.loading`), which this store adopts."""
        name = manifest.backbone.name
        return cls(
            path,
            opened=opened,
            model_digest=manifest.model_digest(precision),
            feature_dim=manifest.backbone.feature_dim,
            preprocess_key=preprocess_key(manifest.preprocess),
            precision=precision.value,
            backbone=name,
            keep_images=keep_images,
            known_models=manifest.known_models(),
        )

    def get_features(self, keys: Sequence[str]) -> dict[str, npt.NDArray[np.float32]]:
        """Look image hashes up in this model's features; returns hits only (see :class:`FeatureCache`)."""
        return self.cache.get(keys)

    def put_features(self, items: Mapping[str, npt.NDArray[np.floating]]) -> bool:
        """Cache features of predicted images without enrolling them (see :class:`FeatureCache`)."""
        return self.cache.put(items)

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
        vectors = as_float32(features, "enrolment features")  # (N, D) float32
        problems = self.images.check_vectors(keys, vectors, "enrolment")
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
        kept = self.images.encode_kept(keys, images)  # before the transaction: encoding a photo takes milliseconds
        with self.connection.writing("Enrolling into"):
            kept = self.images.kept_under_file_policy(keys, images, kept)  # another process may have changed it
            if not self.database.model_registered:  # a model first seen while the state was read-only
                self.database.register_model(self.connection.db)
            self.images.upsert(keys, vectors, overwrite=False)  # a cached prediction's row is already this vector
            self.images.keep_images(keys, kept)
            return [self._insert_sample(key, name) for key, name in zip(keys, names, strict=True)]

    def _insert_sample(self, key: str, label: str) -> int:
        row = self.connection.db.execute(
            "INSERT INTO samples (label, image) VALUES (?, ?) RETURNING id", (label, key)
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

        A ``label`` among ``shipped`` (the bundle's head classes) is also recorded as removed in ``meta``, in the
        same transaction, so later loads forget it too until :meth:`restore_shipped`. The kept pixels of images
        no sample uses any more are deleted (and overwritten: ``secure_delete``); their features stay as a cache.
        """
        if (label is None) == (ids is None):
            raise InputError(f"remove() needs exactly one of label= or ids=, got label={label!r}, ids={ids!r}")
        name = None if label is None else check_label(label, lookup=True)
        wanted = [] if ids is None else check_ids(ids)
        with self.connection.writing("Removing from") as db:
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
            dropped = self.images.drop_unused_images()
        if dropped:
            self.connection.truncate_wal("The removed samples' images")
        return int(removed)

    def _existing_ids(self, ids: list[int]) -> set[int]:
        found: set[int] = set()
        for chunk, marks in in_chunks(ids):
            found.update(
                r[0] for r in self.connection.db.execute(f"SELECT id FROM samples WHERE id IN ({marks})", chunk)
            )
        return found

    def removed_shipped_labels(self) -> list[str]:
        """Classes of the bundle's shipped head that this device removed (``remove(label=..., shipped=...)``)."""
        with self.connection.reading():
            row = self.connection.db.execute("SELECT value FROM meta WHERE key = ?", (REMOVED_SHIPPED_KEY,)).fetchone()
        if row is None:
            return []
        try:
            labels = json.loads(row[0])
        except (TypeError, ValueError):
            labels = None
        if not isinstance(labels, list) or any(label_problem(v, lookup=True) for v in labels):
            raise StateError(f"meta {REMOVED_SHIPPED_KEY!r} is damaged ({str(row[0])[:80]!r}). Fix: {_FIX_CORRUPT}.")
        return [str(v) for v in labels]

    def restore_shipped(self, label: str) -> None:
        """Undo ``remove(label=..., shipped=...)`` of a shipped class: later loads predict it again."""
        name = check_label(label, lookup=True)
        with self.connection.writing("Restoring in") as db:
            gone = self.removed_shipped_labels()
            if name not in gone:
                raise InputError(f"{name!r} is not a shipped class removed on this device; removed: {gone}.")
            kept = json.dumps([g for g in gone if g != name])
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (REMOVED_SHIPPED_KEY, kept))

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
        with self.connection.reading():
            rows = self.connection.db.execute(
                "SELECT s.id, s.label, f.vec, s.image FROM samples s LEFT JOIN features f "
                "ON f.image = s.image AND f.model = ? ORDER BY s.id",
                (self.model,),
            ).fetchall()
        rows = [
            (i, label, blob if blob is not None else self.images.unwritten.get(key), key)
            for i, label, blob, key in rows
        ]
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
                self.cache.decode(blob, key)  # raises the StateError that names the bad row
        ids = np.array([r[0] for r in rows], dtype=np.int64)  # (N,)
        labels = np.array([r[1] for r in rows], dtype=np.str_)  # (N,)
        flat = b"".join(r[2].astype("<f4").tobytes() if isinstance(r[2], np.ndarray) else r[2] for r in rows)
        feats = np.frombuffer(flat, dtype="<f4").astype(np.float32).reshape(len(rows), self.feature_dim)  # (N, D)
        return ids, labels, [str(r[3]) for r in rows], feats

    def seen_features(self, limit: int | None = None) -> npt.NDArray[np.float32]:
        """Features of images seen but not enrolled, newest first (see :meth:`FeatureCache.seen`)."""
        return self.cache.seen(limit)

    def labels(self) -> list[str]:
        """Sorted distinct labels of the enrolled samples."""
        with self.connection.reading():
            return [r[0] for r in self.connection.db.execute("SELECT DISTINCT label FROM samples ORDER BY label")]

    def enrolled_labels(self, keys: Sequence[str]) -> dict[str, list[str]]:
        """Labels under which each image hash in ``keys`` is already enrolled (keys not enrolled are absent).

        A sample upgraded from schema 1 is known by its schema-1 key under the model that made it, which is
        looked up too, whatever model runs now.
        """
        keys = list(dict.fromkeys(keys))
        alias = self.images.legacy_keys(keys)
        lookup = [*keys, *alias]
        found: dict[str, list[str]] = {}
        with self.connection.reading():
            for chunk, marks in in_chunks(lookup):
                query = f"SELECT image, label FROM samples WHERE image IN ({marks}) ORDER BY id"
                for key, label in self.connection.db.execute(query, chunk):
                    found.setdefault(alias.get(str(key), str(key)), []).append(str(label))
        return found

    def duplicates(self, keys: Sequence[str]) -> dict[int, list[str]]:
        """Index -> labels of each image hash enrolled already, or repeated earlier in ``keys``."""
        found = self.enrolled_labels(keys)
        seen: set[str] = set()
        out: dict[int, list[str]] = {}
        for i, key in enumerate(keys):
            if key in found or key in seen:
                out[i] = found.get(key, [])
            seen.add(key)
        return out

    def counts(self) -> dict[str, int]:
        """Number of enrolled samples per label."""
        with self.connection.reading():
            return dict(
                self.connection.db.execute(
                    "SELECT label, COUNT(*) FROM samples GROUP BY label ORDER BY label"
                ).fetchall()
            )

    def __len__(self) -> int:
        with self.connection.reading():
            return int(self.connection.db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: changes whenever ANOTHER connection commits to this file."""
        with self.connection.reading():
            return int(self.connection.db.execute("PRAGMA data_version").fetchone()[0])

    def samples_token(self) -> tuple[int, int]:
        """(count, sum of ids) of the enrolled samples: ids only grow, so any add or remove changes it."""
        with self.connection.reading():
            count, total = self.connection.db.execute("SELECT count(*), coalesce(sum(id), 0) FROM samples").fetchone()
        return int(count), int(total)

    # ---- the face: what the state's parts answer, named where callers look for them

    @property
    def path(self) -> str | None:
        return self.connection.path

    @property
    def read_only(self) -> bool:
        """True when the file cannot be written: it predicts, enrolling raises ``StateReadOnlyError``."""
        return self.connection.read_only

    @property
    def model(self) -> str:
        """The key of the current model's feature space in the state's tables."""
        return self.space.key

    @property
    def feature_dim(self) -> int:
        return self.space.feature_dim

    @property
    def image_policy(self) -> ImageKeeping:
        """The image policy the state holds now (see :class:`ImageKeeping`)."""
        return self.database.image_policy

    def storage(self) -> dict[str, Any]:
        """What the state holds and what it costs on disk (see :meth:`KeptImages.storage`)."""
        return self.images.storage()

    def integrity_check(self) -> list[str]:
        """SQLite's integrity_check plus the state's invariants; empty means healthy."""
        return self.images.integrity_check()

    def forget_images(self) -> int:
        """Delete every kept image and keep features only from now on; returns how many."""
        return self.images.forget_images()

    def checkpoint(self) -> bool:
        """Fold the write-ahead log into the file (see :meth:`StateConnection.checkpoint`)."""
        return self.connection.checkpoint()

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"FeatureStore({self.path or ':memory:'!r}, model={self.space.precision} {self.space.digest[:12]}…, "
            f"dim={self.feature_dim}, images={self.image_policy.to_text()})"
        )
