"""Ridge classifier (one-hot targets, shrinkage-LDA direction) in closed form, solved in the dual.

With N enrolled samples much fewer than D features, everything lives in the N x N kernel
``K = Z Z^T``: fitting and exact leave-one-out over a whole alpha grid are one batch of N x N
inverses (one eigendecomposition beyond N = 256), and enrolling m new samples is a bordered update of
the inverse kept as low-rank terms (:mod:`edgetl_runtime.heads.bordered`), O(N^2 + N m) per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from edgetl_runtime.errors import ConfigError, InputError
from edgetl_runtime.heads.base import BaseHead, FloatArray, IntArray, Labels
from edgetl_runtime.heads.bordered import BorderedInverse
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


def gram(Z: FloatArray) -> npt.NDArray[np.float64]:
    """``Z Z^T`` as float64, multiplied in ``Z``'s own precision (float32 features: twice as fast)."""
    out: npt.NDArray[np.float64] = (Z @ Z.T).astype(np.float64, copy=False)
    return out


def centered_kernel(K: FloatArray) -> FloatArray:
    """Double-centred kernel ``Zc Zc^T`` from ``K = Z Z^T`` in O(N^2), without centring Z."""
    r = K.sum(axis=0) * (1.0 / len(K))  # (N,) K is symmetric: row and column means agree
    out: FloatArray = K - r[:, None] - r[None, :] + r.sum() * (1.0 / len(K))
    return out


def shifted_inverses(Kc: FloatArray, alphas: Any) -> FloatArray:
    """``(Kc + alpha I)^-1`` for every alpha, ``(A, N, N)``, for a symmetric PSD ``Kc``.

    A 2 x 2 block (Schur complement) inverse batched over the alphas: on N ~ 50 it is 2.5x faster
    than one eigendecomposition (LAPACK's overhead dominates at this size) and exact to ~1e-15. The
    Schur complement of an SPD matrix is SPD, so the blocks are as well conditioned as the whole.
    """
    n = len(Kc)
    shift = np.asarray(alphas, dtype=np.float64)[:, None, None]
    if n < 16:
        out: FloatArray = np.linalg.inv(Kc + shift * np.eye(n))
        return out
    h = n // 2
    K12 = Kc[:h, h:]
    inv11 = np.linalg.inv(Kc[:h, :h] + shift * np.eye(h))  # (A, h, h)
    inv11_K12 = inv11 @ K12  # (A, h, n - h)
    schur_inv = np.linalg.inv(Kc[h:, h:] + shift * np.eye(n - h) - K12.T @ inv11_K12)  # (A, n - h, n - h)
    upper_right = -inv11_K12 @ schur_inv
    out = np.empty((len(shift), n, n))
    out[:, :h, :h] = inv11 - upper_right @ inv11_K12.transpose(0, 2, 1)
    out[:, :h, h:] = upper_right
    out[:, h:, :h] = upper_right.transpose(0, 2, 1)
    out[:, h:, h:] = schur_inv
    return out


def ridge_loo(
    Kc: FloatArray, Y: FloatArray, alphas: Any, groups: IntArray | None = None
) -> tuple[FloatArray, FloatArray]:
    """Exact leave-one-(group-)out decisions ``(A, N, C)`` of ridge with a free intercept, and the dual
    coefficients ``(A, N, C)`` of the full fit, from the centred kernel ``Kc``.

    With ``M = (Kc + alpha I)^-1`` the dual coefficients are ``M (Y - mean Y)``, the in-sample residual
    is ``alpha M (Y - mean Y)`` and ``I - H = alpha M - 11^T/N`` (the intercept is unpenalised), so the
    held-out residual of group g is ``(alpha M_gg - 11^T/N)^-1 r_g``: one division per sample when
    every group is a single sample.
    """
    n = len(Y)
    a = np.asarray(alphas, dtype=np.float64)
    R = Y - Y.sum(axis=0) * (1.0 / n)
    dual, diag, blocks = _shifted_inverse_terms(Kc, a, R)
    resid = a[:, None, None] * dual  # (A, N, C) in-sample residuals
    if groups is None or int(np.bincount(groups).max()) == 1:  # (y - yhat) / (1 - h_ii)
        one_minus_h = a[:, None] * diag - 1.0 / n  # (A, N)
        loo: FloatArray = Y - resid / np.maximum(one_minus_h, 1e-12)[:, :, None]
        return loo, dual
    resid = resid.copy()
    for idx in _blocks_by_size(groups):  # (G, m) rows of the G groups of size m
        m = idx.shape[1]
        I_H = a[:, None, None, None] * blocks(idx) - 1.0 / n  # (A, G, m, m)
        if m == 1:
            resid[:, idx[:, 0]] /= np.maximum(I_H[:, :, 0, 0], 1e-12)[:, :, None]
        else:
            resid[:, idx] = np.linalg.pinv(I_H, rcond=1e-10) @ resid[:, idx]  # held-out (I - H_gg)^-1 r_g
    return Y - resid, dual


SMALL_KERNEL = 256  # up to this N, batched inverses (fast, A N^2 memory); beyond, one eigendecomposition


def _shifted_inverse_terms(
    Kc: FloatArray, alphas: FloatArray, R: FloatArray
) -> tuple[FloatArray, FloatArray, Callable[[IntArray], FloatArray]]:
    """``M R`` (A, N, C), ``diag M`` (A, N) and a reader of the blocks ``M[idx, idx]`` (A, G, m, m) for
    ``M = (Kc + alpha I)^-1`` at every alpha.

    Small N: the inverses themselves (:func:`shifted_inverses`). Large N: one eigendecomposition
    ``Kc = U S U^T`` serves every alpha, ``M = U (S + alpha)^-1 U^T``, and nothing A x N x N is stored.
    """
    if len(Kc) <= SMALL_KERNEL:
        M = shifted_inverses(Kc, alphas)  # (A, N, N)
        return M @ R, np.einsum("aii->ai", M), lambda idx: M[:, idx[:, :, None], idx[:, None, :]]
    s, U = np.linalg.eigh(Kc)
    inv = 1.0 / (np.maximum(s, 0.0)[None, :] + alphas[:, None])  # (A, N)
    dual = U @ (inv[:, :, None] * (U.T @ R)[None])  # (A, N, C)
    diag = inv @ (U * U).T  # (A, N)
    return dual, diag, lambda idx: np.einsum("gik,ak,gjk->agij", U[idx], inv, U[idx])


def ridge_loo_decisions(
    Z: FloatArray, Y: FloatArray, alphas: Any, groups: IntArray | None = None, kernel: FloatArray | None = None
) -> FloatArray:
    """Exact leave-one-(group-)out decision values ``(len(alphas), N, C)`` of ridge with a free intercept
    on features ``Z`` (see :func:`ridge_loo`); ``kernel`` is ``Z Z^T`` if already computed."""
    return ridge_loo(centered_kernel(gram(Z) if kernel is None else kernel), Y, alphas, groups)[0]


def select_alpha(loo: FloatArray, y_idx: IntArray, scored: npt.NDArray[np.bool_], alphas: tuple[float, ...]) -> int:
    """Index of the alpha minimising the LOO squared error (PRESS) over the ``scored`` samples.

    ``loo`` is ``(A, N, C)`` held-out decisions. PRESS is the loss ridge itself minimises, it is
    smooth on a handful of samples (unlike LOO accuracy) and needs no exponentials: choosing alpha
    jointly with the temperature by LOO log-loss cost 5x more for the same accuracy on Fashion-MNIST
    (``benchmarks/bench_heads.py``). With nothing to score (one sample per class) it returns the grid
    point nearest :data:`FALLBACK_ALPHA`.
    """
    if not scored.any():
        return int(np.argmin(np.abs(np.log(alphas) - np.log(FALLBACK_ALPHA))))
    d = loo if scored.all() else loo[:, scored, :]  # (A, n, C)
    own = d[:, np.arange(d.shape[1]), y_idx[scored]]  # (A, n)
    press = np.einsum("anc,anc->a", d, d) - 2.0 * own.sum(axis=1)  # ||d - Y||^2 minus a constant
    return int(np.argmin(press))


def loo_temperature(decision: FloatArray, own: IntArray) -> float:
    """The grid temperature minimising the mean log-loss of ``softmax(decision / T)`` for labels ``own``.

    ``decision`` holds the LOO decisions ``(n, C)`` of the scored samples; with none it returns
    :data:`FALLBACK_TEMPERATURE`.
    """
    if not len(decision):
        return FALLBACK_TEMPERATURE
    # Shifting by the max commutes with every T > 0. float32: the grid's log-losses differ by far more
    # than its rounding, and its exp is ~1.5x faster (this runs once per fit that needs probabilities).
    d = (decision - decision.max(axis=1, keepdims=True)).astype(np.float32)
    inv_t = (1.0 / np.asarray(TEMPERATURES)).astype(np.float32)
    lse = np.log(np.exp(d[None] * inv_t[:, None, None]).sum(axis=2)).mean(axis=1)  # (T,)
    nll = lse - d[np.arange(len(d)), own].mean() * inv_t
    return float(TEMPERATURES[int(np.argmin(nll))])


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
