"""Ridge classifier (one-hot targets, shrinkage-LDA direction) in closed form, solved in the dual.

With N enrolled samples much fewer than D features, everything lives in the N x N kernel
``K = Z Z^T``: fitting is one N x N inverse, leave-one-out over a whole alpha grid is one eigen-
decomposition, and enrolling m new samples is a bordered (block) update of the inverse, O(N^2 m).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from edgetl_runtime.errors import ConfigError, InputError
from edgetl_runtime.heads.base import BaseHead, FloatArray, IntArray, Labels
from edgetl_runtime.heads.rejection import SimilarityRejector

DEFAULT_ALPHAS = (0.1, 0.3, 1.0, 3.0, 10.0)  # features are unit-norm, so K_ii = 1 sets the scale
FALLBACK_ALPHA = 0.3  # used when leave-one-out cannot score anything (one sample per class)
FALLBACK_TEMPERATURE = 0.1
TEMPERATURES = (0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


def _group_index(groups: Any, n: int) -> IntArray:
    if groups is None:
        return np.arange(n, dtype=np.int64)
    g = np.asarray(groups).ravel()
    if len(g) != n:
        raise InputError(f"groups has {len(g)} entries but X has {n} samples; pass one group id per sample.")
    return np.unique(g, return_inverse=True)[1].ravel().astype(np.int64)


def _blocks_by_size(groups: IntArray) -> list[IntArray]:
    """Sample indices grouped as one ``(G, m)`` array per group size m (vectorised hold-outs)."""
    order = np.argsort(groups, kind="stable")
    blocks = np.split(order, np.flatnonzero(np.diff(groups[order])) + 1)
    sizes = np.array([len(b) for b in blocks])
    return [np.stack([b for b, m in zip(blocks, sizes, strict=True) if m == size]) for size in np.unique(sizes)]


def loo_scorable(y_idx: IntArray, groups: IntArray, n_classes: int) -> npt.NDArray[np.bool_]:
    """Samples whose class keeps another group when their group is held out (LOO can score them)."""
    if len(groups) and int(np.bincount(groups).max()) == 1:  # one sample per group: count samples
        per_class = np.bincount(y_idx, minlength=n_classes)
    else:
        pairs = np.unique(np.stack([y_idx, groups], axis=1), axis=0)
        per_class = np.bincount(pairs[:, 0], minlength=n_classes)
    out: npt.NDArray[np.bool_] = per_class[y_idx] >= 2
    return out


def centered_eigh(Z: FloatArray, kernel: FloatArray | None = None) -> tuple[FloatArray, FloatArray]:
    """Eigenvalues ``(N,)`` (clipped at 0) and vectors ``(N, N)`` of the centred kernel ``Zc Zc^T``.

    ``kernel`` is ``Z Z^T`` if already computed; it is double-centred in O(N^2) instead of centring Z.
    """
    K = Z @ Z.T if kernel is None else kernel
    r = K.mean(axis=0)  # (N,) K is symmetric: row and column means agree
    s, U = np.linalg.eigh(K - r[:, None] - r[None, :] + r.mean())
    return np.maximum(s, 0.0), U


def ridge_loo_decisions(
    Z: FloatArray,
    Y: FloatArray,
    alphas: Any,
    groups: IntArray | None = None,
    eig: tuple[FloatArray, FloatArray] | None = None,
) -> FloatArray:
    """Exact leave-one-(group-)out decision values ``(len(alphas), N, C)`` of ridge with a free intercept.

    The hat matrix of ridge with an unpenalised intercept is ``11^T/N + U f(S) U^T`` where
    ``U S U^T`` is the eigendecomposition of the centred kernel and ``f(s) = s / (s + alpha)``; the
    held-out residual of group g is ``(I - H_gg)^{-1} (y_g - yhat_g)``.
    """
    n, n_cls = Y.shape
    s, U = centered_eigh(Z) if eig is None else eig  # (N,), (N, N)
    Ymean = Y.mean(axis=0)
    UtY = U.T @ (Y - Ymean)  # (N, C)
    F = s / (s + np.asarray(alphas, dtype=np.float64)[:, None])  # (A, N) shrinkage of each eigen-direction
    n_a = len(F)
    fit = U @ (F.T[:, :, None] * UtY[:, None, :]).reshape(n, n_a * n_cls)  # (N, A*C) for every alpha at once
    resid = (Y[:, None, :] - Ymean - fit.reshape(n, n_a, n_cls)).transpose(1, 0, 2)  # (A, N, C) in-sample
    if groups is None or int(np.bincount(groups).max()) == 1:  # single samples: (y - yhat) / (1 - h_ii)
        h = (U * U) @ F.T + 1.0 / n  # (N, A) leverages
        resid /= np.maximum(1.0 - h, 1e-12).T[:, :, None]
        out: FloatArray = Y - resid
        return out
    blocks = _blocks_by_size(groups)
    for a in range(n_a):
        f = F[a]
        for idx in blocks:  # (G, m) rows of the G groups of size m
            if idx.shape[1] == 1:
                hs = np.einsum("ik,ik->i", U[idx[:, 0]] * f, U[idx[:, 0]]) + 1.0 / n
                resid[a, idx[:, 0]] /= np.maximum(1.0 - hs, 1e-12)[:, None]
                continue
            Ug = U[idx]  # (G, m, N)
            I_H = np.eye(idx.shape[1]) - np.einsum("gik,gjk->gij", Ug * f, Ug) - 1.0 / n  # (G, m, m)
            resid[a, idx] = np.linalg.pinv(I_H, rcond=1e-10) @ resid[a, idx]  # held-out (I - H_gg)^-1 r_g
    out = Y - resid
    return out


def select_alpha_temperature(
    loo: FloatArray, y_idx: IntArray, scored: npt.NDArray[np.bool_], alphas: tuple[float, ...]
) -> tuple[int, float]:
    """Alpha index and softmax temperature minimising the LOO log-loss over the ``scored`` samples.

    ``loo`` is ``(A, N, C)`` held-out decisions. Log-loss is smoother than LOO accuracy on a handful
    of samples. With nothing to score (one sample per class) it returns the grid point nearest
    :data:`FALLBACK_ALPHA` and :data:`FALLBACK_TEMPERATURE`.
    """
    if not scored.any():
        return int(np.argmin(np.abs(np.log(alphas) - np.log(FALLBACK_ALPHA)))), FALLBACK_TEMPERATURE
    rows = np.flatnonzero(scored)
    d = loo[:, rows, :]  # (A, n, C)
    d = d - d.max(axis=2, keepdims=True)  # shifting by the max commutes with every positive temperature
    inv_t = 1.0 / np.asarray(TEMPERATURES)
    own = d[:, np.arange(len(rows)), y_idx[rows]].mean(axis=1)[:, None] * inv_t  # (A, T) mean own logit
    # float32 exp is ~5x faster; its error on the (A, T) mean log-loss is < 1e-5, so a winner ahead of the
    # runner-up by more than _EXACT_GAP is exactly float64's. Closer calls are recomputed in float64.
    nll = _mean_lse(d.astype(np.float32), inv_t.astype(np.float32)) - own  # (A, T) mean LOO log-loss
    order = np.argsort(nll, axis=None)
    if nll.size > 1 and not nll.flat[order[1]] - nll.flat[order[0]] > _EXACT_GAP:
        nll = _mean_lse(d, inv_t) - own
    a, t = np.unravel_index(int(np.argmin(nll)), nll.shape)
    return int(a), float(TEMPERATURES[t])


_EXACT_GAP = 1e-4


def _mean_lse(d: npt.NDArray[Any], inv_t: npt.NDArray[Any]) -> FloatArray:
    """Mean over samples of ``logsumexp(d / T)`` ``(A, T)`` for max-shifted decisions ``d`` ``(A, n, C)``."""
    e = np.exp(d[:, None] * inv_t[None, :, None, None])  # (A, T, n, C), max 1 along C
    out: FloatArray = np.log(e.sum(axis=3, dtype=np.float64)).mean(axis=2)
    return out


class RidgeHead(BaseHead):
    """Multi-output ridge regression on one-hot targets (a.k.a. ridge classifier / shrinkage LDA).

    Features are power-transformed and L2-normalised (see :func:`power_l2`), then the head solves
    ``min ||Z W^T + b - Y||^2 + alpha ||W||^2`` in the dual. ``coef_`` (C, D) and ``intercept_`` (C,)
    apply to the *transformed* features. With ``alpha=None`` it picks alpha from ``alphas`` by exact
    leave-one-out (leave-one-group-out when ``groups`` are passed to ``fit``, e.g. to keep an image and
    its flipped copy together). ``predict_proba`` is ``softmax(decision / temperature_)``, with the
    temperature chosen jointly with alpha by LOO log-likelihood unless given. With both ``alpha`` and
    ``temperature`` given, ``fit`` skips the LOO entirely (the fastest refit).

    ``partial_fit`` keeps ``alpha_`` and ``temperature_`` and updates the dual inverse exactly, so it
    matches ``fit(concatenation, alpha=alpha_)``. The transformed enrolled features ``Z_`` are part
    of the state (needed for incremental updates and :meth:`remove_classes`).
    """

    kind: ClassVar[str] = "ridge"
    _PARAMS: ClassVar[tuple[str, ...]] = ("alpha", "alphas", "temperature", "power", "reject_quantile")
    _STATE: ClassVar[tuple[str, ...]] = ("coef_", "intercept_", "Z_", "y_idx_", "groups_", "Minv_")
    _SCALARS: ClassVar[tuple[str, ...]] = ("alpha_", "temperature_")

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
        K = Z @ Z.T  # (N, N) shared by the eigendecomposition and the rejector's calibration
        eig = centered_eigh(Z, K)
        if self.alpha is not None and self.temperature is not None:  # nothing to select: skip the LOO
            self.alpha_, self.temperature_ = float(self.alpha), float(self.temperature)
        else:
            alphas = self.alphas if self.alpha is None else (self.alpha,)
            loo = ridge_loo_decisions(Z, Y, alphas, groups, eig)
            if scored is None:
                scored = loo_scorable(y_idx, groups, C)
            best, temperature = select_alpha_temperature(loo, y_idx, scored, alphas)
            self.alpha_ = float(alphas[best])
            self.temperature_ = float(self.temperature or temperature)
            self.loo_decision_ = loo[best]  # (N, C) held-out decisions at alpha_, used by AutoHead
        self.Z_, self.y_idx_, self.groups_ = Z, y_idx, groups  # Z_ setter also drops the dual inverse
        s, U = eig
        n = len(Z)
        A = U @ ((U.T @ (Y - Y.mean(axis=0))) / (s + self.alpha_)[:, None])  # (N, C) dual coefficients
        # One pass over Z for everything D-dimensional: A^T Z (C, D), class sums Y^T Z (C, D), mean (D,).
        AZ_sums_mean = np.concatenate([A.T, Y.T, np.full((1, n), 1.0 / n)]) @ Z
        mean = AZ_sums_mean[-1]
        self.coef_ = AZ_sums_mean[:C] - np.outer(A.sum(axis=0), mean)  # (C, D) = A^T (Z - mean)
        self.intercept_ = Y.mean(axis=0) - self.coef_ @ mean
        stats = (AZ_sums_mean[C : 2 * C], Y.sum(axis=0))
        self.rejector_ = SimilarityRejector(self.reject_quantile).fit(Z, y_idx, C, groups, kernel=K, class_stats=stats)
        return self

    # Z_ and Minv_ live in buffers with spare rows, so enrolling one sample writes O(N^2 + D) numbers
    # in place instead of copying the whole state (the buffers double when full).

    @property
    def Z_(self) -> FloatArray:
        """Transformed enrolled features ``(N, D)``."""
        return self._zbuf[: self._n]

    @Z_.setter
    def Z_(self, value: FloatArray) -> None:
        self._zbuf, self._n = np.asarray(value, dtype=np.float64), len(value)  # buffers grow by reallocation
        self._mbuf: FloatArray | None = None
        self._aux: tuple[FloatArray, FloatArray, FloatArray, FloatArray] | None = None

    @property
    def Minv_(self) -> FloatArray:
        """``(Z Z^T + alpha I)^-1`` ``(N, N)``, the state that makes enrolment a bordered update."""
        if self._mbuf is None:
            Z = self.Z_
            self._mbuf = np.linalg.inv(Z @ Z.T + self.alpha_ * np.eye(self._n)).astype(np.float64)
        return self._mbuf[: self._n, : self._n]

    @Minv_.setter
    def Minv_(self, value: FloatArray) -> None:
        self._mbuf = np.array(value, dtype=np.float64)

    def _reserve(self, n_total: int) -> None:
        """Grow both buffers to hold ``n_total`` samples (capacity doubles)."""
        minv = self.Minv_  # materialises the inverse buffer if needed
        cap = min(self._zbuf.shape[0], self._mbuf.shape[0] if self._mbuf is not None else len(minv))
        if n_total <= cap:
            return
        new_cap = max(2 * cap, n_total)
        zbuf = np.empty((new_cap, self._zbuf.shape[1]))
        zbuf[: self._n] = self.Z_
        mbuf = np.empty((new_cap, new_cap))
        mbuf[: self._n, : self._n] = minv
        self._zbuf, self._mbuf = zbuf, mbuf

    def _dual_products(self) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """``(P, M1, PZ, M1Z) = (Minv Y, Minv 1, P^T Z, M1^T Z)``: built once, then updated per enrolment."""
        if self._aux is None:
            Y = np.eye(len(self.classes_))[self.y_idx_]  # (N, C)
            P, M1 = self.Minv_ @ Y, self.Minv_.sum(axis=0)  # (N, C), (N,)
            self._aux = (P, M1, P.T @ self.Z_, M1 @ self.Z_)
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
        B = self.Z_ @ Zn.T  # (N, m)
        u = self.Minv_ @ B  # (N, m)
        S = np.linalg.inv(Zn @ Zn.T + self.alpha_ * np.eye(m) - B.T @ u).astype(np.float64)  # (m, m) Schur inverse
        q = u.T @ self.Z_  # (m, D)
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
        """Bordered inverse in place: ``[[Minv + u S u', -u S], [-S u', S]]``, and append ``Zn``."""
        n, m = self._n, len(Zn)
        side = -u @ S  # (N, m)
        self._reserve(n + m)
        mbuf = self._mbuf if self._mbuf is not None else self.Minv_
        mbuf[:n, :n] -= side @ u.T
        mbuf[:n, n : n + m], mbuf[n : n + m, :n], mbuf[n : n + m, n : n + m] = side, side.T, S
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
        out: FloatArray = Z @ self.coef_.T + self.intercept_  # (N, C) regressed one-hot scores
        return out

    def _logits(self, Z: FloatArray) -> FloatArray:
        return self._decision(Z) / self.temperature_
