"""The images the device has seen, in the heads' feature space, kept up to date by appending.

Adapting to the seen images (:mod:`edgetl_runtime.heads.adapt`) needs each seen feature power-transformed and
L2-normalised, their sum, and nothing non-finite or repeated. Done at every fit, that is a pass over the whole
``(M, D)`` pool (a square root of 11.5 M floats for 1000 Lite0 images) plus reading it back from the state. The
pool does it once per image instead: rows are transformed when they arrive, the sum is kept, and a refit
reads only the rows that arrived since the last one (:meth:`SeenPool.sync`).

Rows carry the id the state gave them (the cache's rowid, increasing with arrival), so rows the state no longer
has (evicted from the bounded cache, or enrolled since) leave the pool at the next sync.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime.errors import InputError
from edgetl_runtime.heads.base import power_l2

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
ReadAfter = Callable[[int], tuple[I64, F32]]  # rows with an id above the given one: (ids ascending, features)


class SeenPool:
    """Unit, power-transformed rows ``(M, D)`` float32 of the distinct, finite seen features, oldest first."""

    def __init__(self, n_features: int, power: float = 0.5) -> None:
        self.n_features, self.power = int(n_features), float(power)
        self._buf = np.zeros((0, self.n_features), dtype=np.float32)
        self._ids = np.zeros(0, dtype=np.int64)
        self._prints = np.zeros(0, dtype=np.float64)  # one random projection per row: equal rows, equal prints
        self._n = 0
        self._sum = np.zeros(self.n_features)  # (D,) float64 sum of the rows
        self.non_finite = 0  # rows refused since creation
        self.repeats = 0
        self._probe = np.random.default_rng(0).standard_normal(self.n_features)

    def __len__(self) -> int:
        return self._n

    @property
    def rows(self) -> F32:
        """``(M, D)`` unit rows, oldest first (a view: do not write into it)."""
        return self._buf[: self._n]

    @property
    def ids(self) -> I64:
        return self._ids[: self._n]

    @property
    def sum(self) -> npt.NDArray[np.float64]:
        return self._sum

    @property
    def last_id(self) -> int:
        return int(self._ids[self._n - 1]) if self._n else -1

    def add(self, features: Any, ids: Any = None) -> int:
        """Append seen ``features`` (m, D); ``ids`` default to numbers after :attr:`last_id`. Non-finite rows and
        rows equal to one already in the pool are counted and left out. Returns how many were added."""
        arr = np.asarray(features)
        if arr.ndim != 2 or arr.shape[1] != self.n_features:
            raise InputError(
                f"seen features have shape {arr.shape}, but the head is expecting (M, {self.n_features}) features. "
                "Fix: pass the seen images' features from the same model (FeatureStore.seen_features())."
            )
        new_ids = self.last_id + 1 + np.arange(len(arr)) if ids is None else np.asarray(ids, dtype=np.int64)
        if not len(arr):
            return 0
        arr = arr.astype(np.float32, copy=False)
        with np.errstate(all="ignore"):
            # Row by row in float64 (einsum, not BLAS: a row's print must not depend on the rows beside it), and
            # non-finite iff the row is.
            prints = np.einsum("md,d->m", arr, self._probe)
        keep = np.isfinite(prints)
        self.non_finite += int((~keep).sum())
        _, first = np.unique(np.where(keep, prints, np.nan), return_index=True)
        unique = np.zeros(len(arr), dtype=bool)
        unique[first] = True
        seen_before = np.isin(prints, self._prints[: self._n])
        fresh = keep & unique & ~seen_before
        self.repeats += int((keep & ~fresh).sum())
        if not fresh.any():
            return 0
        rows = power_l2(arr[fresh], self.power).astype(np.float32, copy=False)
        self._append(rows, new_ids[fresh], prints[fresh])
        return int(fresh.sum())

    def _append(self, rows: F32, ids: I64, prints: npt.NDArray[np.float64]) -> None:
        n, m = self._n, len(rows)
        if n + m > len(self._buf):  # capacity doubles: appending one image costs O(D), not a copy of the pool
            cap = max(2 * len(self._buf), n + m, 64)
            for name, width in (("_buf", self.n_features), ("_ids", 0), ("_prints", 0)):
                old = getattr(self, name)
                grown = np.zeros((cap, width) if width else cap, dtype=old.dtype)
                grown[:n] = old[:n]
                setattr(self, name, grown)
        self._buf[n : n + m], self._ids[n : n + m], self._prints[n : n + m] = rows, ids, prints
        self._n = n + m
        self._sum += rows.sum(axis=0, dtype=np.float64)

    def keep_only(self, ids: Any) -> int:
        """Drop every row whose id is not in ``ids`` (evicted or enrolled since); returns how many left."""
        alive = np.isin(self.ids, np.asarray(ids, dtype=np.int64))
        dropped = int((~alive).sum())
        if dropped:
            n = int(alive.sum())
            prints = self._prints[: self._n][alive]
            self._buf[:n], self._ids[:n], self._prints[:n] = self.rows[alive], self.ids[alive], prints
            self._n = n
            self._sum = self.rows.sum(axis=0, dtype=np.float64)  # exact again, not a running difference
        return dropped

    def sync(self, current_ids: I64, read_after: ReadAfter) -> int:
        """Match the state: keep the rows whose ids are still in ``current_ids``, then read and add the rows that
        arrived after the newest one held. Returns how many were read."""
        self.keep_only(current_ids)
        ids, features = read_after(self.last_id)
        if len(ids):
            self.add(features, ids)
        return len(ids)

    def newest(self, limit: int) -> tuple[F32, npt.NDArray[np.float64]]:
        """The newest ``limit`` rows and their sum (the pool's own sum when all are used: no pass over them)."""
        if self._n <= limit:
            return self.rows, self._sum
        rows = self.rows[self._n - limit :]
        return rows, rows.sum(axis=0, dtype=np.float64)

    @classmethod
    def of(cls, features: Any, n_features: int, power: float = 0.5) -> SeenPool:
        """A pool of ``features``: an array of seen features newest first (as ``FeatureStore.seen_features()``
        returns them), or already a pool, returned as is."""
        if isinstance(features, SeenPool):
            if features.n_features != n_features or features.power != power:
                raise InputError(
                    f"The seen pool holds {features.n_features} features at power {features.power}, but the head "
                    f"expects {n_features} at power {power}. Fix: build the pool for this head's model and power."
                )
            return features
        pool = cls(n_features, power)
        arr = np.asarray(features) if features is not None else np.zeros((0, n_features), dtype=np.float32)
        if arr.size == 0:
            return pool
        pool.add(arr[::-1])  # the pool holds the oldest first
        return pool


__all__ = ["SeenPool"]
