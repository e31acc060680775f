"""The images the device has seen, in the heads' feature space, kept up to date by appending.

Adapting to the seen images (:mod:`edgetl_runtime.heads.adapt`) needs each seen feature power-transformed and
L2-normalised, their sum, and nothing non-finite or repeated. Done at every fit, that is a pass over the whole
``(M, D)`` pool (a square root of 11.5 M floats for 1000 Lite0 images) plus reading it back from the state. The
pool does it once per image and process instead: rows are transformed when they arrive, the sum is kept, and a
refit reads only the images that are new since the last one (:meth:`SeenPool.sync`).

Rows are named by their image's key in the state's cache (its hash), not by a row number: a row the state no
longer holds (evicted from the bounded cache, enrolled since, or beyond the newest ``limit``) leaves the pool at
the next sync, and one that comes back (a removed sample's image) is read again, whatever SQLite numbered it.
The oldest rows leave first, so the pool is a window over a buffer: dropping them moves its start and subtracts
their sum, without copying the rest.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime.errors import InputError
from edgetl_runtime.heads.base import power_l2

F32 = npt.NDArray[np.float32]
ReadKeys = Callable[[list[str]], Mapping[str, Any]]  # image keys -> their features (absent keys left out)
_AUTO_KEYS = itertools.count()


class SeenPool:
    """Unit, power-transformed rows ``(M, D)`` float32 of the distinct, finite seen features, oldest first."""

    def __init__(self, n_features: int, power: float = 0.5) -> None:
        self.n_features, self.power = int(n_features), float(power)
        self._buf = np.zeros((0, self.n_features), dtype=np.float32)
        self._prints = np.zeros(0, dtype=np.float64)  # one random projection per row: equal rows, equal prints
        self._start = self._end = 0  # the rows are _buf[_start:_end]
        self._keys: list[str] = []  # one per row, in order
        self._sum = np.zeros(self.n_features)  # (D,) float64 sum of the rows
        self._refused: dict[str, str] = {}  # key -> "non_finite" or "repeat": not read again while the state has it
        self._probe = np.random.default_rng(0).standard_normal(self.n_features)

    def __len__(self) -> int:
        return self._end - self._start

    @property
    def rows(self) -> F32:
        """``(M, D)`` unit rows, oldest first (a view: do not write into it)."""
        return self._buf[self._start : self._end]

    @property
    def keys(self) -> list[str]:
        return list(self._keys)

    @property
    def sum(self) -> npt.NDArray[np.float64]:
        return self._sum

    @property
    def non_finite(self) -> int:
        """Seen images left out because their features are not finite (a broken member, a corrupt row)."""
        return sum(reason == "non_finite" for reason in self._refused.values())

    @property
    def repeats(self) -> int:
        """Seen images left out because their features equal a row already held (the same picture twice)."""
        return sum(reason == "repeat" for reason in self._refused.values())

    def add(self, features: Any, keys: Sequence[str] | None = None) -> int:
        """Append seen ``features`` (m, D) under their ``keys`` (default: fresh names). Non-finite rows and rows
        equal to one already held are remembered as refused and left out. Returns how many were added."""
        arr = np.asarray(features)
        if arr.ndim != 2 or arr.shape[1] != self.n_features:
            raise InputError(
                f"seen features have shape {arr.shape}, but the head is expecting (M, {self.n_features}) features. "
                "Fix: pass the seen images' features from the same model (FeatureStore.seen_features())."
            )
        names = [f"#{next(_AUTO_KEYS)}" for _ in range(len(arr))] if keys is None else [str(k) for k in keys]
        if len(names) != len(arr):
            raise InputError(f"{len(names)} keys for {len(arr)} seen features; pass one key per row.")
        if not len(arr):
            return 0
        arr = arr.astype(np.float32, copy=False)
        with np.errstate(all="ignore"):
            # Row by row in float64 (einsum, not BLAS: a row's print must not depend on the rows beside it), and
            # non-finite iff the row is.
            prints = np.einsum("md,d->m", arr, self._probe)
        finite = np.isfinite(prints)
        _, first = np.unique(np.where(finite, prints, np.nan), return_index=True)
        unique = np.zeros(len(arr), dtype=bool)
        unique[first] = True
        fresh = finite & unique & ~np.isin(prints, self._prints[self._start : self._end])
        for i in np.flatnonzero(~fresh):
            self._refused[names[i]] = "non_finite" if not finite[i] else "repeat"
        if not fresh.any():
            return 0
        rows = power_l2(arr[fresh], self.power).astype(np.float32, copy=False)
        self._append(rows, [names[i] for i in np.flatnonzero(fresh)], prints[fresh])
        return int(fresh.sum())

    def _append(self, rows: F32, keys: list[str], prints: npt.NDArray[np.float64]) -> None:
        n, m = len(self), len(rows)
        if self._end + m > len(self._buf):
            if n + m <= len(self._buf):  # slide the window to the front in place, in blocks that do not overlap
                step = max(self._start, 1)
                for i in range(0, n, step):
                    j = min(i + step, n)
                    self._buf[i:j], self._prints[i:j] = (
                        self._buf[self._start + i : self._start + j],
                        self._prints[self._start + i : self._start + j],
                    )
            else:  # grow, with a quarter to spare (the window then slides that far before it moves)
                cap = n + m + max((n + m) // 4, 64)
                buf, pr = np.empty((cap, self.n_features), dtype=np.float32), np.empty(cap)
                buf[:n], pr[:n] = self.rows, self._prints[self._start : self._end]
                self._buf, self._prints = buf, pr
            self._start, self._end = 0, n
        self._buf[self._end : self._end + m], self._prints[self._end : self._end + m] = rows, prints
        self._end += m
        self._keys.extend(keys)
        self._sum += rows.sum(axis=0, dtype=np.float64)

    def keep_only(self, keys: Sequence[str] | set[str]) -> int:
        """Drop every row whose key is not in ``keys``; returns how many left. The oldest leaving (eviction, the
        newest-``limit`` window) moves the window's start; rows leaving from the middle (an enrolment) compact it."""
        keep = keys if isinstance(keys, set) else set(keys)
        self._refused = {k: r for k, r in self._refused.items() if k in keep}
        alive = np.fromiter((k in keep for k in self._keys), dtype=bool, count=len(self._keys))
        dropped = int((~alive).sum())
        if not dropped:
            return 0
        first_alive = int(alive.argmax()) if alive.any() else len(alive)
        if alive[first_alive:].all():  # a prefix leaves: move the start, subtract its sum
            self._sum -= self.rows[:first_alive].sum(axis=0, dtype=np.float64)
            self._start += first_alive
            del self._keys[:first_alive]
        else:
            n = int(alive.sum())
            rows, prints = self.rows[alive], self._prints[self._start : self._end][alive]
            self._buf[:n], self._prints[:n], self._start, self._end = rows, prints, 0, n
            self._keys = [k for k, a in zip(self._keys, alive, strict=True) if a]
            self._sum = self.rows.sum(axis=0, dtype=np.float64)  # exact again, not a running difference
        if not len(self):
            self._sum = np.zeros(self.n_features)
        return dropped

    def sync(self, current: Sequence[str], read: ReadKeys) -> int:
        """Match the state: ``current`` are the keys of the seen images it holds, oldest first. Rows not among them
        leave; keys neither held nor refused before are read (``read(keys)`` -> features by key) and added.
        Returns how many keys were read."""
        self.keep_only(set(current))
        held = set(self._keys) | self._refused.keys()
        missing = [k for k in current if k not in held]
        if missing:
            found = read(missing)
            names = [k for k in missing if k in found]
            if names:
                self.add(np.stack([np.asarray(found[k], dtype=np.float32) for k in names]), names)
        return len(missing)

    def newest(self, limit: int) -> tuple[F32, npt.NDArray[np.float64]]:
        """The newest ``limit`` rows and their sum (the pool's own sum when all are used: no pass over them)."""
        if len(self) <= limit:
            return self.rows, self._sum
        rows = self._buf[self._end - limit : self._end]
        return rows, rows.sum(axis=0, dtype=np.float64)

    @classmethod
    def of(cls, features: Any, n_features: int, power: float = 0.5, limit: int | None = None) -> SeenPool:
        """A pool of ``features``: an array of seen features newest first (as ``FeatureStore.seen_features()``
        returns them; only the first ``limit`` are used), or already a pool, returned as is."""
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
        pool.add(arr[:limit][::-1])  # the pool holds the oldest first
        return pool


__all__ = ["SeenPool"]
