"""The inverse of a symmetric matrix that grows by bordering, kept as a base plus low-rank terms.

Enrolling m samples into a dual ridge head borders ``M = Z Z^T + alpha I`` by m rows and columns. The
new inverse is the old one, zero-padded, plus ``w S w^T`` with ``w = [u; -I_m]`` (``u = M^-1 b``, ``S``
the inverse Schur complement). Writing that rank-m term into a dense N x N inverse touches N^2
numbers per enrolment (most of the cost of adding one sample at N = 500); keeping the terms aside
makes an enrolment O(N m) and a product with the inverse O(N^2 + N k) for k pending columns. The
terms are folded into the dense base every ``max_rank`` columns, amortising the O(N^2 k) fold.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

Float64Array = npt.NDArray[np.floating[Any]]  # float64 in practice: the N x N algebra is never float32


class BorderedInverse:
    """``inverse = pad(base) + W S W^T`` with ``W`` (N, k) and block-diagonal ``S`` (k, k)."""

    def __init__(self, base: Float64Array, max_rank: int = 32) -> None:
        self._base: Float64Array = np.asarray(base, dtype=np.float64)
        self._n = len(self._base)
        self.max_rank = max_rank
        self._w = np.zeros((2 * self._n + 8, max_rank))  # rows beyond the current N stay zero
        self._s = np.zeros((max_rank, max_rank))
        self._k = 0

    @property
    def n(self) -> int:
        """Current size N of the (square) inverse."""
        return self._n

    def matmul(self, B: Float64Array) -> Float64Array:
        """``inverse @ B`` for ``B`` (N, m), without forming the dense inverse."""
        nb, k = len(self._base), self._k
        out = np.zeros((self._n, B.shape[1]))
        out[:nb] = self._base @ B[:nb]
        if k:
            W = self._w[: self._n, :k]
            out += W @ (self._s[:k, :k] @ (W.T @ B))
        return out

    def border(self, u: Float64Array, S: Float64Array) -> None:
        """Grow by ``m = len(S)``: the bordered inverse ``[[inv + u S u^T, -u S], [-S u^T, S]]``."""
        n, m = self._n, len(S)
        if self._k + m > self.max_rank:
            self.fold()
        if m > self.max_rank:  # a large batch: fold it straight into the base
            side = -u @ S  # (N, m)
            base = np.empty((n + m, n + m))
            base[:n, :n] = self.dense() - side @ u.T
            base[:n, n:], base[n:, :n], base[n:, n:] = side, side.T, S
            self._reset(base)
            return
        if n + m > len(self._w):
            grown = np.zeros((2 * (n + m), self.max_rank))
            grown[:n] = self._w[:n]
            self._w = grown
        k = self._k
        self._w[:n, k : k + m] = u
        self._w[n : n + m, k : k + m] = -np.eye(m)
        self._s[k : k + m, k : k + m] = S
        self._k, self._n = k + m, n + m

    def fold(self) -> None:
        """Fold the pending low-rank terms into the dense base (O(N^2 k))."""
        if self._k:
            self._reset(self.dense())

    def dense(self) -> Float64Array:
        """The inverse as a dense ``(N, N)`` array (a new array when terms are pending)."""
        nb, k = len(self._base), self._k
        if not k and nb == self._n:
            return self._base
        out = np.zeros((self._n, self._n))
        out[:nb, :nb] = self._base
        W = self._w[: self._n, :k]
        out += (W @ self._s[:k, :k]) @ W.T
        return out

    def _reset(self, base: Float64Array) -> None:
        self._base, self._n = base, len(base)
        if len(self._w) < self._n:
            self._w = np.zeros((2 * self._n + 8, self.max_rank))
        else:
            self._w[:, : self._k] = 0.0
        self._s[: self._k, : self._k] = 0.0
        self._k = 0
