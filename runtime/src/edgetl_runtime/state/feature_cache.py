"""The prediction cache: features of images the device has seen, so a second look never re-runs the backbone.

Derived data, bounded: beyond ``max_unenrolled`` features of images no sample uses, the oldest are
evicted. Enrolled samples' features are never evicted.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from edgetl_runtime.errors import InputError, StateError, StateWriteError, raise_all
from edgetl_runtime.state.errors import _FIX_CORRUPT
from edgetl_runtime.state.images import KeptImages, as_float32, in_chunks

__all__ = ["FeatureCache"]

_UNENROLLED = "NOT EXISTS (SELECT 1 FROM samples s WHERE s.image = f.image)"  # a cached image no sample uses
_SEEN = f"FROM features f WHERE f.model = ? AND {_UNENROLLED}"  # this model's seen images (bind the model key)


class FeatureCache:
    """This model's features by image hash, read and cached on the state's connection."""

    def __init__(self, images: KeptImages, max_unenrolled: int) -> None:
        self.images = images
        self.connection, self.database, self.space = images.connection, images.database, images.space
        self.max_unenrolled = max_unenrolled
        self._warned_uncached = False
        self._cached_since_eviction = max_unenrolled  # the first cache write evicts: a one-shot process too

    def decode(self, blob: bytes, key: str) -> npt.NDArray[np.float32]:
        if not isinstance(blob, bytes) or len(blob) != 4 * self.space.feature_dim:
            size = len(blob) if isinstance(blob, (bytes, str)) else type(blob).__name__
            raise StateError(
                f"Cached feature {key!r} has {size} bytes, expected {4 * self.space.feature_dim} "
                f"(feature_dim {self.space.feature_dim} x float32). Fix: {_FIX_CORRUPT}."
            )
        return np.frombuffer(blob, dtype="<f4").astype(np.float32)  # (D,) float32, writable copy

    def get(self, keys: Sequence[str]) -> dict[str, npt.NDArray[np.float32]]:
        """Look image hashes up in this model's features; returns hits only, each a (D,) float32 array."""
        unique = list(dict.fromkeys(keys))
        out = {k: self.images.unwritten[k] for k in unique if k in self.images.unwritten}
        with self.connection.reading():
            db = self.connection.db
            for chunk, marks in in_chunks(unique):
                query = f"SELECT image, vec FROM features WHERE model = ? AND image IN ({marks})"
                for key, blob in db.execute(query, [self.space.key, *chunk]):
                    out[key] = self.decode(blob, key)
        return out

    def put(self, items: Mapping[str, npt.NDArray[np.floating]]) -> bool:
        """Cache features without enrolling them, in one transaction; returns whether they were cached.

        The cache is derived data, so caching is best effort: a read-only state skips it, and a failed
        write (locked, disk full) warns once and is skipped, so a prediction never fails for its cache.
        """
        if not items:
            return True
        keys = list(items)
        dim = self.space.feature_dim
        problems = [
            f"feature for {k!r} has shape {np.shape(v)}, expected ({dim},)"
            for k, v in items.items()
            if np.shape(v) != (dim,)
        ]
        raise_all(InputError, problems, "Cannot cache features")
        vectors = np.stack([as_float32(items[k], f"feature for {k!r}") for k in keys])  # (N, D) float32
        raise_all(InputError, self.images.check_vectors(keys, vectors, "cached"), "Cannot cache features")
        if self.connection.read_only or not self.database.model_registered:
            return False
        try:
            with self.connection.writing("Caching features in", durable=False):  # derived data: losing it costs a rerun
                self.images.upsert(keys, vectors)
                self._cached_since_eviction += len(keys)
                if self._cached_since_eviction >= max(1, self.max_unenrolled // 100):
                    self.evict()
        except StateWriteError as exc:
            if not self._warned_uncached:
                self._warned_uncached = True
                warnings.warn(f"Features are not cached: {exc}", RuntimeWarning, stacklevel=2)
            return False
        return True

    def evict(self) -> None:
        """Drop the oldest cached features (any model) of images no sample uses, beyond ``max_unenrolled``.

        Counting them scans the features (4.1 ms at 5k samples and 10k cached), so it runs at a store's first
        cache write (a one-shot ``edgetl-device predict`` process too) and then once per 1 % of
        ``max_unenrolled`` new rows: the cache overshoots its bound by at most that much per open store.
        """
        self._cached_since_eviction = 0
        db = self.connection.db
        unenrolled = f"FROM features f WHERE {_UNENROLLED}"
        (count,) = db.execute(f"SELECT count(*) {unenrolled}").fetchone()
        excess = count - self.max_unenrolled
        if excess > 0:
            db.execute(
                f"DELETE FROM features WHERE rowid IN (SELECT f.rowid {unenrolled} ORDER BY f.rowid LIMIT ?)", (excess,)
            )

    def seen_keys(self, limit: int) -> list[str]:
        """Image keys of the newest ``limit`` seen images (cached under this model, not enrolled), oldest first:
        what a :class:`~edgetl_runtime.heads.seen_pool.SeenPool` syncs to (it reads the features it lacks with
        :meth:`get`)."""
        with self.connection.reading():
            rows = self.connection.db.execute(
                f"SELECT image FROM (SELECT f.rowid AS r, f.image {_SEEN} ORDER BY f.rowid DESC LIMIT ?) ORDER BY r",
                (self.space.key, int(limit)),
            ).fetchall()
        return [str(r[0]) for r in rows]

    def seen(self, limit: int | None = None) -> npt.NDArray[np.float32]:
        """This model's cached features of images seen but not enrolled (the prediction cache), newest first,
        at most ``limit`` (default ``max_unenrolled``): ``(M, D)`` float32, the unlabelled pool the head adapts to.
        """
        n = self.max_unenrolled if limit is None else int(limit)
        with self.connection.reading():
            rows = self.connection.db.execute(
                f"SELECT f.vec {_SEEN} ORDER BY f.rowid DESC LIMIT ?",
                (self.space.key, n),
            ).fetchall()
        blobs = [r[0] for r in rows if isinstance(r[0], bytes) and len(r[0]) == 4 * self.space.feature_dim]
        return (
            np.frombuffer(b"".join(blobs), dtype="<f4").astype(np.float32).reshape(len(blobs), self.space.feature_dim)
        )
