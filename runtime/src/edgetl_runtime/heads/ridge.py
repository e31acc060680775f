"""Ridge classifier (one-hot targets, shrinkage-LDA direction) in closed form, solved in the dual (its exact
leave-one-out: :mod:`edgetl_runtime.heads.ridge_loo`).

With N enrolled samples much fewer than D features, everything lives in the N x N kernel
``K = Z Z^T``: fitting and exact leave-one-out over a whole alpha grid are one batch of N x N
inverses (one eigendecomposition beyond N = 256), and enrolling m new samples is a bordered update of
the inverse kept as low-rank terms (:mod:`edgetl_runtime.heads.bordered`), O(N^2 + N m) per batch.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from edgetl_runtime.errors import ConfigError, InputError
from edgetl_runtime.heads.base import BaseHead, FloatArray, IntArray, Labels
from edgetl_runtime.heads.bordered import BorderedInverse
from edgetl_runtime.heads.rejection import SimilarityRejector
from edgetl_runtime.heads.ridge_loo import (
    DEFAULT_ALPHAS,
    FALLBACK_ALPHA,
    FALLBACK_TEMPERATURE,
    TEMPERATURES,
    _group_index,
    centered_kernel,
    gram,
    loo_scorable,
    loo_temperature,
    ridge_loo,
    select_alpha,
    shifted_inverses,
)


class RidgeHead(BaseHead):
    """Multi-output ridge regression on one-hot targets (a.k.a. ridge classifier / shrinkage LDA).

    Features are power-transformed and L2-normalised (see :func:`power_l2`), then the head solves
    ``min ||Z W^T + b - Y||^2 + alpha ||W||^2`` in the dual. ``coef_`` (C, D) and ``intercept_`` (C,)
    apply to the *transformed* features. With ``alpha=None`` it picks alpha from ``alphas`` by exact
    leave-one-out squared error (leave-one-group-out when ``groups`` are passed to ``fit``, e.g. to keep
    an image and its flipped copy together; see :func:`select_alpha`). ``predict_proba`` is
    ``softmax(decision / temperature_)``, with the temperature chosen by LOO log-likelihood at
    ``alpha_`` on first use unless given. With both ``alpha`` and ``temperature`` given, ``fit`` skips
    the LOO entirely.

    ``partial_fit`` keeps ``alpha_`` and ``temperature_`` and updates the dual inverse exactly, so it
    matches ``fit(concatenation, alpha=alpha_)``. The transformed enrolled features ``Z_`` are part
    of the state (needed for incremental updates and :meth:`remove_classes`).
    """

    kind: ClassVar[str] = "ridge"
    _PARAMS: ClassVar[tuple[str, ...]] = ("alpha", "alphas", "temperature", "power", "reject_quantile")
    _STATE: ClassVar[tuple[str, ...]] = ("coef_", "intercept_", "Z_", "y_idx_", "groups_", "Minv_")
    _SCALARS: ClassVar[tuple[str, ...]] = ("alpha_", "temperature_")
    coef_: FloatArray
    intercept_: FloatArray

    def __init__(
        self,
        alpha: float | None = None,
        alphas: tuple[float, ...] | list[float] = DEFAULT_ALPHAS,
        temperature: float | None = None,
        power: float = 0.5,
        reject_quantile: float = 0.05,
    ) -> None:
        self.alpha = alpha
        self.alphas = tuple(float(a) for a in alphas)
        self.temperature = temperature
        self.power = power
        self.reject_quantile = reject_quantile

    def _validate_params(self) -> None:
        bad = [a for a in (self.alpha, *self.alphas) if a is not None and not a > 0]
        if bad or not self.alphas or not self.power > 0 or (self.temperature is not None and not self.temperature > 0):
            raise ConfigError(
                f"RidgeHead needs alpha/alphas > 0 (got {self.alpha}, {self.alphas}), power > 0 (got {self.power}) "
                f"and temperature None or > 0 (got {self.temperature})."
            )

    def fit(self, X: Any, y: Any, groups: Any = None) -> RidgeHead:
        """Fit from scratch on ``X`` (N, D) and labels ``y``; ``groups`` ties samples together for LOO."""
        self._validate_params()
        arr, labels = self._check_fit_inputs(X, y)
        self.classes_, y_idx = np.unique(labels, return_inverse=True)
        self.n_features_in_ = arr.shape[1]
        return self._fit_transformed(
            self._transform(arr), y_idx.ravel().astype(np.int64), _group_index(groups, len(arr))
        )

    def _fit_transformed(
        self, Z: FloatArray, y_idx: IntArray, groups: IntArray, scored: npt.NDArray[np.bool_] | None = None
    ) -> RidgeHead:
        """Fit on transformed features; ``scored`` is :func:`loo_scorable` if the caller has it."""
        C = len(self.classes_)
        Y = np.eye(C)[y_idx]  # (N, C) one-hot
        K = gram(Z)  # (N, N) shared with the rejector's calibration
        Kc = centered_kernel(K)
        self._temperature, self._temperature_inputs = self.temperature, None
        if self.alpha is not None and self.temperature is not None:  # nothing to select: skip the LOO
            self.alpha_ = float(self.alpha)
            A = shifted_inverses(Kc, [self.alpha_])[0] @ (Y - Y.sum(axis=0) * (1.0 / len(Y)))  # (N, C) dual coefs
        else:
            alphas = self.alphas if self.alpha is None else (self.alpha,)
            loo, duals = ridge_loo(Kc, Y, alphas, groups)
            if scored is None:
                scored = loo_scorable(y_idx, groups, C)
            best = select_alpha(loo, y_idx, scored, alphas)
            self.alpha_, A = float(alphas[best]), duals[best]
            self.loo_decision_ = loo[best]  # (N, C) held-out decisions at alpha_, used by AutoHead
            self._temperature_inputs = (self.loo_decision_[scored], y_idx[scored])  # for temperature_
        self.Z_, self.y_idx_, self.groups_ = Z, y_idx, groups  # Z_ setter also drops the dual inverse
        n = len(Z)
        # The dual coefficients sum to zero over samples (M 1 = 1/alpha for the centred kernel, and the
        # targets are centred), so A^T (Z - mean) = A^T Z: one pass over Z, and the intercept comes
        # from the kernel, A^T Z mean = A^T K 1 / n. The rejector's class sums wait until needed.
        self.coef_ = (A.T.astype(Z.dtype) @ Z).astype(np.float64)  # (C, D)
        self.intercept_ = Y.sum(axis=0) * (1.0 / n) - A.T @ K.sum(axis=1) * (1.0 / n)
        self.rejector_ = SimilarityRejector(self.reject_quantile).fit(Z, y_idx, C, groups, kernel=K)
        return self

    @property
    def temperature_(self) -> float:
        """Softmax temperature of ``predict_proba``: ``temperature`` if given, else the one minimising the
        LOO log-loss at ``alpha_``, computed on first use (``predict`` never needs it)."""
        value = self._temperature
        if value is None:
            inputs = self._temperature_inputs  # immutable snapshot: racing threads compute the same value
            value = FALLBACK_TEMPERATURE if inputs is None else loo_temperature(*inputs)
            self._temperature = value
        return float(value)

    @temperature_.setter
    def temperature_(self, value: float) -> None:
        self._temperature, self._temperature_inputs = float(value), None

    # Z_ lives in a buffer with spare rows (doubling when full) and the dual inverse in a
    # BorderedInverse, so enrolling one sample costs O(N D + N^2) reads and O(N + D) writes instead of
    # copying or rewriting the whole state.

    @property
    def Z_(self) -> FloatArray:
        """Transformed enrolled features ``(N, D)``."""
        return self._zbuf[: self._n]

    @Z_.setter
    def Z_(self, value: FloatArray) -> None:
        arr = np.asarray(value)
        self._zbuf = arr if arr.dtype in (np.float32, np.float64) else arr.astype(np.float64)
        self._n = len(value)
        self._inv: BorderedInverse | None = None
        self._aux: tuple[FloatArray, FloatArray, FloatArray, FloatArray] | None = None

    @property
    def Minv_(self) -> FloatArray:
        """``(Z Z^T + alpha I)^-1`` ``(N, N)``, the state that makes enrolment a bordered update."""
        return self._inverse().dense().copy()  # a copy: writing into it must not change the head

    @Minv_.setter
    def Minv_(self, value: FloatArray) -> None:
        self._inv = BorderedInverse(np.array(value, dtype=np.float64))

    def _inverse(self) -> BorderedInverse:
        if self._inv is None:
            self._inv = BorderedInverse(np.linalg.inv(gram(self.Z_) + self.alpha_ * np.eye(self._n)))
        return self._inv

    def _dual_products(self) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """``(P, M1, PZ, M1Z) = (Minv Y, Minv 1, P^T Z, M1^T Z)``: built once, then updated per enrolment."""
        if self._aux is None:
            Y1 = np.eye(len(self.classes_) + 1)[self.y_idx_]  # (N, C + 1) one-hot, last column 0
            Y1[:, -1] = 1.0
            PM1 = self._inverse().matmul(Y1)
            P, M1 = PM1[:, :-1], PM1[:, -1]  # (N, C), (N,)
            PM1Z = (PM1.T.astype(self._zbuf.dtype) @ self.Z_).astype(np.float64)  # (C + 1, D)
            self._aux = (P, M1, PM1Z[:-1], PM1Z[-1])
        return self._aux

    def _coef_from_products(self) -> None:
        """Ridge with a free intercept from the dual (LS-SVM): ``b = 1'P / 1'M1``, ``W = (P - M1 b')' Z``."""
        P, M1, PZ, M1Z = self._dual_products()
        self.intercept_ = P.sum(axis=0) / M1.sum()  # (C,)
        self.coef_ = PZ - np.outer(self.intercept_, M1Z)  # (C, D)

    def partial_fit(self, X: Any, y: Any) -> RidgeHead:
        """Enrol more samples (and classes) with ``alpha_`` fixed: a bordered update of the dual inverse.

        Costs O(N^2 m + N D m) for m new samples (no O(N D C) product), and equals refitting exactly.
        """
        if not hasattr(self, "classes_"):
            return self.fit(X, y)
        arr, labels = self._check_fit_inputs(self._check_X(X), y)
        classes, remap = self._merge_classes(labels)
        new_idx = np.searchsorted(classes, labels).astype(np.int64)
        Zn = self._transform(arr)  # (m, D)
        n, m, C = self._n, len(Zn), len(classes)
        P_old, M1, PZ_old, M1Z = self._dual_products()
        P, PZ = np.zeros((n, C)), np.zeros((C, Zn.shape[1]))
        P[:, remap], PZ[remap] = P_old, PZ_old  # new classes get zero columns: no old sample votes for them
        Y_old = np.eye(C)[remap[self.y_idx_]]  # (N, C)
        Zn = Zn.astype(self._zbuf.dtype, copy=False)  # the state's precision, so no (N, D) up-cast below
        B = (self.Z_ @ Zn.T).astype(np.float64)  # (N, m)
        u = self._inverse().matmul(B)  # (N, m)
        schur = Zn @ Zn.T + self.alpha_ * np.eye(m) - B.T @ u  # (m, m), symmetric up to rounding
        # Symmetrise exactly: the bordered inverse assumes it, and a slightly asymmetric S written into it
        # is amplified ~100x by every later batch (measured: garbage after ten batches of 40).
        S = np.linalg.inv((schur + schur.T) * 0.5)
        S = (S + S.T) * 0.5
        q = u.T.astype(Zn.dtype) @ self.Z_  # (m, D)
        r = S @ (np.eye(C)[new_idx] - u.T @ Y_old)  # (m, C) new rows of P
        r1 = S @ (1.0 - u.sum(axis=0))  # (m,) new entries of M1
        self._aux = (
            np.concatenate([P - u @ r, r]),
            np.concatenate([M1 - u @ r1, r1]),
            PZ - r.T @ q + r.T @ Zn,
            M1Z - r1 @ q + r1 @ Zn,
        )
        self._grow_inverse(Zn, u, S)
        self.rejector_.partial_fit(Zn, new_idx, C, remap)
        self.y_idx_ = np.concatenate([remap[self.y_idx_], new_idx])
        self.groups_ = np.concatenate([self.groups_, self.groups_.max() + 1 + np.arange(m)])
        self.classes_ = classes
        self._coef_from_products()
        return self

    def _grow_inverse(self, Zn: FloatArray, u: FloatArray, S: FloatArray) -> None:
        """Border the dual inverse with the new samples' ``u`` and Schur inverse ``S``; append ``Zn``."""
        n, m = self._n, len(Zn)
        self._inverse().border(u, S)
        if n + m > len(self._zbuf):  # capacity doubles, so appends are amortised O(D)
            zbuf = np.empty((max(2 * len(self._zbuf), n + m), self._zbuf.shape[1]), dtype=self._zbuf.dtype)
            zbuf[:n] = self.Z_
            self._zbuf = zbuf
        self._zbuf[n : n + m] = Zn
        self._n = n + m

    def remove_classes(self, labels: Any) -> RidgeHead:
        """Refit without the given classes, from the stored enrolled features (alpha re-selected if auto)."""
        self._check_is_fitted()
        drop = np.isin(self.classes_, np.asarray(labels))
        keep = ~drop[self.y_idx_]
        if not keep.any():
            raise InputError("Cannot remove every class; a head needs at least one enrolled class.")
        kept_labels: Labels = self.classes_[self.y_idx_[keep]]
        self.classes_, y_idx = np.unique(kept_labels, return_inverse=True)
        return self._fit_transformed(self.Z_[keep], y_idx.ravel().astype(np.int64), self.groups_[keep])

    def _decision(self, Z: FloatArray) -> FloatArray:
        # coef_ in the queries' precision: float32 features are never up-cast as a whole (N, D) copy.
        out: FloatArray = Z @ self.coef_.T.astype(Z.dtype, copy=False) + self.intercept_  # (N, C) one-hot scores
        return out

    def _logits(self, Z: FloatArray) -> FloatArray:
        return self._decision(Z) / self.temperature_


__all__ = ["DEFAULT_ALPHAS", "FALLBACK_ALPHA", "FALLBACK_TEMPERATURE", "TEMPERATURES", "RidgeHead", "loo_temperature"]
