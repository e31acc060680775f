"""Per-class sufficient statistics of transformed features: what a shipped head is, and what merges add.

A class ``c`` of transformed features ``z`` (:func:`~edgetl_runtime.heads.base.power_l2`) is summarised by
its count ``n_c``, its sum ``s_c`` (D,) and its scatter about its mean, ``S_c = sum (z - m_c)(z - m_c)^T``,
kept as factor rows ``F_c`` (k_c, D) plus a residual trace ``rho_c``:

    S_c ~= F_c^T F_c + (rho_c / D) I

Everything the device heads need is a function of these: NCM reads the sums and counts, the LDA /
ridge head (:class:`~edgetl_runtime.heads.lda.LDAHead`) the sums, counts and scatters. Adding samples or
merging two sets of statistics is exact (counts and sums add; scatters add with the parallel-axis term
``n_a n_b / n (m_a - m_b)(m_a - m_b)^T``); so is dropping a class. The one approximation is
:meth:`ClassStats.compress`, which keeps the top ``rank`` directions of a class's scatter and moves the
rest of its trace into ``rho_c``, i.e. treats what is left as isotropic (a shrinkage toward ``I``).
A class of ``n`` samples has a scatter of rank ``n - 1``, so up to ``rank + 1`` samples it is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime.errors import InputError, raise_all
from edgetl_runtime.heads.base import check_features, check_labels, power_l2

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
EXACT_GRAM_LIMIT = 4096  # up to this min(rows, D) the top directions come from one eigh; beyond, randomized


@dataclass(frozen=True, eq=False)
class ClassStats:
    """Counts, sums and low-rank scatters of each class, in the space of ``power_l2(x, power)``.

    Attributes:
        classes: ``(C,)`` sorted, distinct labels (str or int).
        counts: ``(C,)`` samples per class (> 0).
        sums: ``(C, D)`` sum of the transformed features of each class.
        factors: ``(K, D)`` scatter factor rows; row k belongs to class ``factor_class[k]``.
        factor_class: ``(K,)`` class index of each factor row.
        residual: ``(C,)`` scatter trace of each class outside its factor rows (>= 0).
        power: the transform's exponent; statistics only combine with features transformed alike.
    """

    classes: npt.NDArray[Any]
    counts: F64
    sums: F64
    factors: F64
    factor_class: I64
    residual: F64
    power: float = 0.5

    def __post_init__(self) -> None:
        raise_all(InputError, self.problems(), "Class statistics are inconsistent")

    def problems(self) -> list[str]:
        """Every inconsistency of shapes and values (empty when the statistics are usable)."""
        C = len(self.classes)
        D = self.sums.shape[1] if self.sums.ndim == 2 else -1
        out = []
        if self.classes.ndim != 1 or C == 0 or len(np.unique(self.classes)) != C:
            out.append(f"classes must be a non-empty 1-D array of distinct labels, got shape {self.classes.shape}")
        elif self.classes.dtype.kind not in "Ui" or np.any(self.classes[:-1] >= self.classes[1:]):
            out.append("classes must be str or int labels in sorted order")
        if self.sums.shape != (C, D) or D < 1:
            out.append(f"sums must have shape (C={C}, D), got {self.sums.shape}")
        if self.counts.shape != (C,) or not np.all(self.counts > 0):
            out.append(f"counts must be {C} positive numbers, got shape {self.counts.shape}")
        if self.residual.shape != (C,) or not np.all(self.residual >= 0):
            out.append(f"residual must be {C} numbers >= 0, got shape {self.residual.shape}")
        if self.factors.ndim != 2 or self.factors.shape[1] != D:
            out.append(f"factors must have shape (K, D={D}), got {self.factors.shape}")
        if self.factor_class.shape != (len(self.factors),) or np.any(
            (self.factor_class < 0) | (self.factor_class >= C)
        ):
            out.append(f"factor_class must hold one class index in 0..{C - 1} per factor row")
        arrays = (self.counts, self.sums, self.factors, self.residual)
        if not out and not all(np.isfinite(a).all() for a in arrays):
            out.append("counts, sums, factors and residual must be finite")
        if not self.power > 0:
            out.append(f"power must be > 0, got {self.power}")
        return out

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_features(cls, X: Any, y: Any, power: float = 0.5, rank: int | None = None) -> ClassStats:
        """Statistics of raw features ``X`` (N, D) with labels ``y``; exact unless ``rank`` compresses them."""
        arr = check_features(X)
        labels = check_labels(y, len(arr))
        classes, y_idx = np.unique(labels, return_inverse=True)
        return cls.from_transformed(power_l2(arr, power), y_idx.ravel().astype(np.int64), classes, power, rank)

    @classmethod
    def from_transformed(
        cls, Z: Any, y_idx: I64, classes: npt.NDArray[Any], power: float, rank: int | None = None
    ) -> ClassStats:
        """Statistics of transformed features ``Z`` (N, D) whose class indices into ``classes`` are ``y_idx``.

        Each class's factor rows are its centred samples (exact); with ``rank`` a class of more samples
        keeps only its top ``rank`` scatter directions, class by class, so the full (N, D) centred
        matrix never exists at once.
        """
        Z64 = np.asarray(Z, dtype=np.float64)
        C, D = len(classes), Z64.shape[1]
        counts, sums = np.zeros(C), np.zeros((C, D))
        rows: list[F64] = []
        owners: list[I64] = []
        residual = np.zeros(C)
        for c in range(C):
            Zc = Z64[y_idx == c]  # (n_c, D)
            counts[c], sums[c] = len(Zc), Zc.sum(axis=0)
            Fc = Zc - sums[c] / max(len(Zc), 1)
            if rank is not None and len(Fc) > rank:
                Fc, residual[c] = top_rows(Fc, rank)
            rows.append(Fc)
            owners.append(np.full(len(Fc), c, dtype=np.int64))
        return cls(np.asarray(classes), counts, sums, _stack(rows, D), np.concatenate(owners), residual, power)

    # ------------------------------------------------------------------ views

    @property
    def dim(self) -> int:
        """Feature width D."""
        return int(self.sums.shape[1])

    @property
    def means(self) -> F64:
        """Class means ``(C, D)``."""
        out: F64 = self.sums / self.counts[:, None]
        return out

    def scatter(self, c: int) -> F64:
        """Dense scatter ``(D, D)`` of class index ``c`` as represented (tests and diagnostics; O(D^2))."""
        F = self.factors[self.factor_class == c]
        out: F64 = F.T @ F + (self.residual[c] / self.dim) * np.eye(self.dim)
        return out

    def counts_by_label(self) -> dict[str, int]:
        return {str(k): int(round(v)) for k, v in zip(self.classes.tolist(), self.counts, strict=True)}

    # ------------------------------------------------------------------ algebra (exact unless stated)

    def merge(self, other: ClassStats) -> ClassStats:
        """Statistics of the union of both sample sets (exact): one class per label, whichever side it came from."""
        if other.dim != self.dim or other.power != self.power:
            raise InputError(
                f"Cannot merge class statistics of width {other.dim} (power {other.power}) into width {self.dim} "
                f"(power {self.power}); they come from different features. Fix: merge statistics of one bundle."
            )
        if self.classes.dtype.kind != other.classes.dtype.kind:
            raise InputError("Cannot merge str-labelled with int-labelled statistics; use one label type.")
        classes = np.unique(np.concatenate([self.classes, other.classes]))
        C, D = len(classes), self.dim
        where_a, where_b = np.searchsorted(classes, self.classes), np.searchsorted(classes, other.classes)
        counts, sums, residual = np.zeros(C), np.zeros((C, D)), np.zeros(C)
        for where, part in ((where_a, self), (where_b, other)):
            counts[where] += part.counts
            sums[where] += part.sums
            residual[where] += part.residual
        rows = [self.factors, other.factors]
        owners = [where_a[self.factor_class], where_b[other.factor_class]]
        shared_a = np.flatnonzero(np.isin(self.classes, other.classes))
        if len(shared_a):  # parallel-axis term of each class present on both sides
            shared_b = np.searchsorted(other.classes, self.classes[shared_a])
            na, nb = self.counts[shared_a], other.counts[shared_b]
            shift = self.means[shared_a] - other.means[shared_b]  # (S, D)
            rows.append(np.sqrt(na * nb / (na + nb))[:, None] * shift)
            owners.append(where_a[shared_a])
        return ClassStats(classes, counts, sums, _stack(rows, D), np.concatenate(owners), residual, self.power)

    def drop(self, labels: Any) -> ClassStats | None:
        """The statistics without the given classes (exact); None when no class is left."""
        keep = ~np.isin(self.classes, np.asarray(labels))
        if not keep.any():
            return None
        new_index = np.cumsum(keep) - 1
        rows = keep[self.factor_class]
        return ClassStats(
            self.classes[keep],
            self.counts[keep],
            self.sums[keep],
            self.factors[rows],
            new_index[self.factor_class[rows]].astype(np.int64),
            self.residual[keep],
            self.power,
        )

    def compress(self, rank: int) -> ClassStats:
        """At most ``rank`` factor rows per class: the top scatter directions kept, the rest of the trace moved
        into ``residual`` (the only approximation here; classes with at most ``rank`` rows are untouched)."""
        if rank < 1:
            raise InputError(f"rank must be >= 1, got {rank}.")
        rows, owners, residual = [], [], self.residual.copy()
        for c in range(len(self.classes)):
            Fc = self.factors[self.factor_class == c]
            if len(Fc) > rank:
                Fc, lost = top_rows(Fc, rank)
                residual[c] += lost
            rows.append(Fc)
            owners.append(np.full(len(Fc), c, dtype=np.int64))
        return ClassStats(
            self.classes, self.counts, self.sums, _stack(rows, self.dim), np.concatenate(owners), residual, self.power
        )

    # ------------------------------------------------------------------ persistence

    def to_npz_dict(self, factor_dtype: Any = np.float32, sums_dtype: Any = np.float32) -> dict[str, npt.NDArray[Any]]:
        """Plain arrays (no object arrays). ``factor_dtype=np.float16`` halves the file: the factors' rounding
        (~5e-4 relative) is far below the truncation :meth:`compress` already made; float64 keeps everything."""
        return {
            "classes": self.classes,
            "counts": self.counts.astype(np.float64),
            "sums": self.sums.astype(sums_dtype),
            "factors": self.factors.astype(factor_dtype),
            "factor_class": self.factor_class.astype(np.int32),
            "residual": self.residual.astype(np.float64),
            "power": np.array(self.power, dtype=np.float64),
        }

    @classmethod
    def from_npz_dict(cls, d: dict[str, npt.NDArray[Any]] | Any) -> ClassStats:
        """Rebuild from :meth:`to_npz_dict` output; every inconsistency raises one :class:`InputError`."""
        missing = sorted({"classes", "counts", "sums", "factors", "factor_class", "residual", "power"} - set(d.keys()))
        if missing:
            raise InputError(f"Class statistics lack {missing}; they were not written by ClassStats.to_npz_dict().")
        try:
            return cls(
                np.asarray(d["classes"]),
                np.asarray(d["counts"], dtype=np.float64),
                np.asarray(d["sums"], dtype=np.float64),
                np.asarray(d["factors"], dtype=np.float64),
                np.asarray(d["factor_class"], dtype=np.int64),
                np.asarray(d["residual"], dtype=np.float64),
                float(d["power"]),
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"Class statistics hold values of the wrong type ({exc}).") from None


def _stack(rows: list[F64], dim: int) -> F64:
    present = [r for r in rows if len(r)]
    return np.concatenate(present).astype(np.float64) if present else np.zeros((0, dim))


def top_rows(F: F64, rank: int, seed: int = 0) -> tuple[F64, float]:
    """The ``rank`` rows ``sqrt(lambda_j) v_j`` of the top eigenpairs of ``F^T F``, and the trace they leave out.

    One eigendecomposition of the smaller Gram matrix when it is at most :data:`EXACT_GRAM_LIMIT` wide;
    beyond, a randomized range finder with two power iterations (Halko et al. 2011). Either way the
    trace left out is exact, so the total scatter is preserved.
    """
    k, D = F.shape
    total = float(np.einsum("kd,kd->", F, F))
    if min(k, D) <= EXACT_GRAM_LIMIT:
        if k <= D:
            lam, U = np.linalg.eigh(F @ F.T)  # (k,), (k, k) ascending
            top = np.argsort(lam)[::-1][:rank]
            rows: F64 = U[:, top].T @ F  # (rank, D): u^T F = sqrt(lambda) v^T
        else:
            lam, V = np.linalg.eigh(F.T @ F)  # (D,), (D, D)
            top = np.argsort(lam)[::-1][:rank]
            rows = np.sqrt(np.maximum(lam[top], 0.0))[:, None] * V[:, top].T
    else:
        rng = np.random.default_rng(seed)
        Y = F @ rng.standard_normal((D, rank + 10))  # (k, r + 10)
        for _ in range(2):
            Y = F @ (F.T @ np.linalg.qr(Y)[0])
        basis = np.linalg.qr(Y)[0]  # (k, r + 10) orthonormal range of F
        B = basis.T @ F  # (r + 10, D): F restricted to the range
        lam, U = np.linalg.eigh(B @ B.T)
        top = np.argsort(lam)[::-1][:rank]
        rows = U[:, top].T @ B
    kept = float(np.einsum("kd,kd->", rows, rows))
    return rows, max(total - kept, 0.0)
