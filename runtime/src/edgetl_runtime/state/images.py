"""The images side of device state: what the image policy keeps of each enrolled picture, the samples a
model still needs features for and storing those once re-extracted (or restored by enrolling the image
again), forgetting the pixels (privacy), the state's health and what it all costs on disk."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from edgetl_runtime.errors import InputError, StateError, raise_all
from edgetl_runtime.state.database import StateDatabase
from edgetl_runtime.state.image_policy import ImageKeeping, KeepMode, decode_pixels, encode_pixels
from edgetl_runtime.warn import warn

_CHUNK = 500  # host parameters per statement; stays under SQLITE_MAX_VARIABLE_NUMBER of old SQLite builds.
T = TypeVar("T")


def in_chunks(items: Sequence[T]) -> Iterator[tuple[list[T], str]]:
    """``items`` in slices small enough for one ``IN (...)`` each, with that slice's ``?, ?, ...`` marks."""
    for start in range(0, len(items), _CHUNK):
        chunk = list(items[start : start + _CHUNK])
        yield chunk, ",".join("?" * len(chunk))


def as_float32(array: object, what: str) -> npt.NDArray[np.float32]:
    try:
        return np.asarray(array, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"{what} must be numeric, got {type(array).__name__} ({exc}). Fix: pass a float array."
        ) from exc


class KeptImages:
    """Operations on the ``images`` table (one row per enrolled image hash, pixels or NULL), and the samples
    the current model still needs features for, on an open :class:`StateDatabase`."""

    def __init__(self, database: StateDatabase) -> None:
        self.database = database
        self.connection = database.connection
        self.space = database.space
        # Features computed for enrolled samples of a model a read-only state has never seen: kept for this
        # process, since they cannot be written.
        self.unwritten: dict[str, npt.NDArray[np.float32]] = {}

    def feature_key(self, image_hash: str, model_digest: str | None = None, preprocess_key: str | None = None) -> str:
        """Schema 1's key of an image's features under a model (this one by default): what a schema-1 state
        and enrolment files written before schema 2 name a sample by."""
        # NUL separators keep the three parts from sliding into each other ("ab"+"c" vs "a"+"bc").
        parts = (image_hash, model_digest or self.space.digest, preprocess_key or self.space.preprocess_key)
        return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()

    def legacy_keys(self, image_hashes: Sequence[str]) -> dict[str, str]:
        """Schema-1 key -> image hash, under every model the state has known: an upgraded sample is named by one."""
        with self.connection.reading():
            models = self.connection.db.execute("SELECT model_digest, preprocess_key FROM models").fetchall()
        return {self.feature_key(h, str(d), str(p)): h for h in image_hashes for d, p in models}

    def encode_kept(
        self, keys: list[str], images: Sequence[npt.NDArray[np.uint8]] | None
    ) -> dict[str, tuple[int, int, bytes, int, int] | None]:
        """Image hash -> (height, width, encoded pixels, source height, source width) the policy keeps, or
        None (features only)."""
        out: dict[str, tuple[int, int, bytes, int, int] | None] = {}
        for i, key in enumerate(keys):
            small = None if images is None else self.database.image_policy.shrink(images[i])
            if key not in out or small is not None:
                source = (0, 0) if images is None else images[i].shape[:2]
                out[key] = None if small is None else (*small.shape[:2], encode_pixels(small, key), *source)
        return out

    def kept_under_file_policy(
        self,
        keys: list[str],
        images: Sequence[npt.NDArray[np.uint8]] | None,
        kept: dict[str, tuple[int, int, bytes, int, int] | None],
    ) -> dict[str, tuple[int, int, bytes, int, int] | None]:
        """``kept`` again under the policy the file holds now; call inside the write transaction. Another process
        may have changed it (forget_images) since this one opened: the file's policy is the one that holds."""
        stored = self.database.read_policy(self.connection.db)
        if stored != self.database.image_policy:
            self.database.image_policy = stored
            kept = self.encode_kept(keys, images)
        return kept

    def keep_images(self, keys: list[str], kept: Mapping[str, tuple[int, int, bytes, int, int] | None]) -> None:
        """One images row per hash; pixels fill in a features-only row when the same image comes with them."""
        db = self.connection.db
        for key in dict.fromkeys(keys):
            data = kept.get(key)
            db.execute("INSERT OR IGNORE INTO images (hash) VALUES (?)", (key,))
            if data is not None:
                db.execute(
                    "UPDATE images SET height = ?, width = ?, pixels = ?, source_height = ?, source_width = ? "
                    "WHERE hash = ? AND pixels IS NULL",
                    (*data, key),
                )

    def drop_unused_images(self) -> int:
        """Delete the images rows (and kept pixels) no sample uses; returns how many held pixels."""
        unused = "NOT EXISTS (SELECT 1 FROM samples s WHERE s.image = images.hash)"
        (kept,) = self.connection.db.execute(
            f"SELECT count(*) FROM images WHERE pixels IS NOT NULL AND {unused}"
        ).fetchone()
        self.connection.db.execute(f"DELETE FROM images WHERE {unused}")
        return int(kept)

    def kept_pixels(self, keys: Sequence[str], *, skip_damaged: bool = False) -> dict[str, npt.NDArray[np.uint8]]:
        """Image hash -> the kept ``(H, W, 3)`` uint8 pixels, for those of ``keys`` that have them.

        A blob that does not decode is a :class:`StateError`, or with ``skip_damaged`` left out with a
        warning (a load must not fail for one damaged image: its sample can then be removed and re-enrolled).
        """
        out: dict[str, npt.NDArray[np.uint8]] = {}
        unique = list(dict.fromkeys(keys))
        with self.connection.reading():
            for chunk, marks in in_chunks(unique):
                query = f"SELECT hash, height, width, pixels FROM images WHERE pixels IS NOT NULL AND hash IN ({marks})"
                for key, h, w, blob in self.connection.db.execute(query, chunk):
                    try:
                        out[str(key)] = decode_pixels(blob, h, w, f"image {str(key)[:12]}…", str(key))
                    except StateError as exc:
                        if not skip_damaged:
                            raise
                        warn(str(exc), RuntimeWarning)
        return out

    def unusable_samples(self, keys: Sequence[str]) -> dict[str, tuple[str, list[int], list[str]]]:
        """Image hash -> (its sample identity, ids, labels) for those of ``keys`` enrolled already (by hash, or
        by a schema-1 key) whose samples the current model has no features for and cannot re-extract."""
        keys = list(dict.fromkeys(keys))
        alias = {**{k: k for k in keys}, **self.legacy_keys(keys)}  # identity -> image hash
        out: dict[str, tuple[str, list[int], list[str]]] = {}
        identities = list(alias)
        with self.connection.reading():
            for chunk, marks in in_chunks(identities):
                query = (
                    f"SELECT s.id, s.label, s.image FROM samples s WHERE s.image IN ({marks}) AND NOT EXISTS "
                    "(SELECT 1 FROM features f WHERE f.image = s.image AND f.model = ?) ORDER BY s.id"
                )
                for sample_id, label, identity in self.connection.db.execute(query, [*chunk, self.space.key]):
                    entry = out.setdefault(alias[str(identity)], (str(identity), [], []))
                    entry[1].append(int(sample_id))
                    entry[2].append(str(label))
        return out

    def shrunk_sides(self, keys: Sequence[str]) -> dict[str, int]:
        """Image hash -> kept shorter side, for those of ``keys`` kept as a thumbnail smaller than enrolled."""
        out: dict[str, int] = {}
        unique = list(dict.fromkeys(keys))
        with self.connection.reading():
            for chunk, marks in in_chunks(unique):
                query = (
                    "SELECT hash, min(height, width) FROM images WHERE pixels IS NOT NULL AND "
                    f"min(source_height, source_width) > min(height, width) AND hash IN ({marks})"
                )
                out.update((str(k), int(side)) for k, side in self.connection.db.execute(query, chunk))
        return out

    def forget_images(self) -> int:
        """Delete every kept image (overwritten on disk) and keep features only from now on; returns how many.

        Samples stay enrolled, for the models that already have their features; another precision or a
        new bundle can no longer re-extract them.
        """
        with self.connection.writing("Forgetting images in") as db:
            gone = db.execute("UPDATE images SET height = NULL, width = NULL, pixels = NULL WHERE pixels IS NOT NULL")
            self.database.write_policy(db, ImageKeeping(KeepMode.NONE))
        self.database.image_policy = ImageKeeping(KeepMode.NONE)
        self.connection.truncate_wal("The forgotten images")
        return int(gone.rowcount)

    def storage(self) -> dict[str, Any]:
        """What the state holds and what it costs on disk: kept images, features per model, file size."""
        with self.connection.reading():
            db = self.connection.db
            images, kept, pixel_bytes = db.execute(
                "SELECT count(*), count(pixels), coalesce(sum(length(pixels)), 0) FROM images"
            ).fetchone()
            models = db.execute(
                "SELECT m.key, m.precision, m.backbone, m.model_digest, m.feature_dim, count(f.image), "
                "coalesce(sum(length(f.vec)), 0), (SELECT count(*) FROM samples s JOIN features g ON g.image = s.image "
                "AND g.model = m.key) FROM models m LEFT JOIN features f ON f.model = m.key "
                "GROUP BY m.key ORDER BY m.first_used, m.key"
            ).fetchall()
        return {
            "image_policy": self.database.image_policy.to_text(),
            "images": int(images),
            "images_kept": int(kept),
            "kept_pixel_bytes": int(pixel_bytes),
            "models": [
                {
                    "precision": p,
                    "backbone": b,
                    "model_digest": d,
                    "feature_dim": int(dim),
                    "samples_with_features": int(covered),  # enrolled samples this model can use now
                    "features": int(n),  # also those of predicted images (a cache, evicted beyond max_unenrolled)
                    "feature_bytes": int(size),
                    "current": key == self.space.key,
                }
                for key, p, b, d, dim, n, size, covered in models
            ],
            "file_bytes": sum(
                os.path.getsize(f"{self.connection.path}{suffix}")
                for suffix in ("", "-wal")
                if self.connection.path is not None and os.path.exists(f"{self.connection.path}{suffix}")
            ),
        }

    def undecodable_images(self) -> list[tuple[str, str]]:
        """Every kept image whose pixels fail to decode (damage SQLite's own checks cannot see)."""
        bad = []
        with self.connection.reading():
            rows = self.connection.db.execute("SELECT hash, height, width, pixels FROM images WHERE pixels IS NOT NULL")
            for key, h, w, blob in rows:
                try:
                    decode_pixels(blob, h, w, "", str(key))
                except (StateError, TypeError, ValueError) as exc:
                    bad.append((str(key), type(exc).__name__))
        return bad

    def samples_without_features(self) -> list[tuple[int, str, str, bool]]:
        """(id, label, image hash, pixels kept) of every sample this model has no features for yet: enrolled
        under another precision or bundle. Those with pixels can be re-extracted; the others cannot."""
        with self.connection.reading():
            rows = self.connection.db.execute(
                "SELECT s.id, s.label, s.image, i.pixels IS NOT NULL FROM samples s JOIN images i ON i.hash = s.image "
                "WHERE NOT EXISTS (SELECT 1 FROM features f WHERE f.image = s.image AND f.model = ?) ORDER BY s.id",
                (self.space.key,),
            ).fetchall()
        return [(int(i), str(label), str(key), bool(kept)) for i, label, key, kept in rows if key not in self.unwritten]

    def integrity_check(self) -> list[str]:
        """SQLite's integrity_check plus our invariants; returns the problems found (empty means healthy)."""
        with self.connection.reading():
            db = self.connection.db
            problems = [f"sqlite: {r[0]}" for r in db.execute("PRAGMA integrity_check") if r[0] != "ok"]
            problems += [f"foreign key: {row}" for row in db.execute("PRAGMA foreign_key_check").fetchall()[:20]]
            bad = db.execute(
                "SELECT f.image, length(f.vec), m.feature_dim FROM features f JOIN models m ON m.key = f.model "
                "WHERE length(f.vec) != 4 * m.feature_dim"
            ).fetchall()
            problems += [f"feature of {k[:12]}… has {n} bytes, expected {4 * d}" for k, n, d in bad[:20]]
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("schema_version") != "2":
                problems.append(f"meta 'schema_version' is {meta.get('schema_version')!r}, expected '2'")
            try:
                ImageKeeping.from_text(str(meta.get("image_policy")))
            except StateError as exc:
                problems.append(str(exc))
        for key, blob in self.undecodable_images():
            problems.append(f"kept pixels of {key[:12]}… do not decode: {blob}")
        return problems

    def check_vectors(self, keys: Sequence[object], vectors: npt.NDArray[np.float32], what: str) -> list[str]:
        """Collect every problem with keys and a (N, D) array, so the caller raises once."""
        problems = [
            f"{what} key #{i} must be a non-empty str, got {k!r}"
            for i, k in enumerate(keys)
            if not k or not isinstance(k, str)
        ]
        if vectors.ndim != 2 or vectors.shape[1] != self.space.feature_dim:
            problems.append(f"{what} features have shape {vectors.shape}, expected (N, {self.space.feature_dim})")
        elif not np.isfinite(vectors).all():
            bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
            problems.append(f"{what} features rows {bad[:10].tolist()} contain NaN or inf; expected finite values")
        return problems

    def upsert(self, keys: Sequence[str], vectors: npt.NDArray[np.float32], *, overwrite: bool = True) -> None:
        """Store this model's features; without ``overwrite`` a row already there (the same image under the
        same model, hence the same vector) is left as it is instead of being written again."""
        rows = [(k, self.space.key, v.tobytes()) for k, v in zip(keys, np.asarray(vectors, dtype="<f4"), strict=True)]
        # Upsert, not INSERT OR REPLACE: REPLACE deletes the row first, then inserts it again as the newest.
        conflict = "DO UPDATE SET vec=excluded.vec" if overwrite else "DO NOTHING"
        self.connection.db.executemany(
            f"INSERT INTO features VALUES (?, ?, ?) ON CONFLICT(image, model) {conflict}", rows
        )

    def add_model_features(self, items: Mapping[str, npt.NDArray[np.floating]]) -> None:
        """Store this model's features of enrolled images computed after the fact (from kept pixels).

        Durable like an enrolment; a read-only state keeps them in memory for this process instead.
        """
        keys = list(items)
        vectors = np.stack([as_float32(items[k], f"feature for {k[:12]}") for k in keys])  # (N, D)
        raise_all(InputError, self.check_vectors(keys, vectors, "re-extracted"), "Cannot store features")
        if self.connection.read_only:
            self.unwritten.update(zip(keys, vectors, strict=True))
            return
        with self.connection.writing("Storing re-extracted features in"):
            if not self.database.model_registered:
                self.database.register_model(self.connection.db)
            self.upsert(keys, vectors)

    def restore_samples(
        self, identities: Sequence[str], features: npt.NDArray[np.floating], images: Sequence[npt.NDArray[np.uint8]]
    ) -> None:
        """Give enrolled samples this model's features and their image again (the same image enrolled anew,
        see ``unusable_samples``), in one transaction: the samples become usable, none is added."""
        keys = list(identities)
        vectors = as_float32(features, "restored features")  # (N, D)
        raise_all(InputError, self.check_vectors(keys, vectors, "restored"), "Cannot restore samples")
        kept = self.encode_kept(keys, images)
        with self.connection.writing("Restoring samples in"):
            kept = self.kept_under_file_policy(keys, images, kept)
            if not self.database.model_registered:
                self.database.register_model(self.connection.db)
            self.upsert(keys, vectors)
            self.keep_images(keys, kept)
