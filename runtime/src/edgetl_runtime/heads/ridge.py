"""Ridge classifier (one-hot targets, shrinkage-LDA direction) in closed form, solved in the dual.

With N enrolled samples much fewer than D features, everything lives in the N x N kernel
``K = Z Z^T``: fitting is one N x N inverse, leave-one-out over a whole alpha grid is one eigen-
decomposition, and enrolling m new samples is a bordered (block) update of the inverse, O(N^2 m).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from edgetl_runtime.errors import ConfigError, InputError
from edgetl_runtime.heads.base import BaseHead, FloatArray, IntArray, Labels, softmax
from edgetl_runtime.heads.rejection import SimilarityRejector

DEFAULT_ALPHAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
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


def ridge_loo_decisions(Z: FloatArray, Y: FloatArray, alphas: Any, groups: IntArray | None = None) -> FloatArray:
    """Exact leave-one-(group-)out decision values ``(len(alphas), N, C)`` of ridge with a free intercept.

    The hat matrix of ridge with an unpenalised intercept is ``11^T/N + U f(S) U^T`` where
    ``U S U^T`` is the eigendecomposition of the centred kernel and ``f(s) = s / (s + alpha)``; the
    held-out residual of group g is ``(I - H_gg)^{-1} (y_g - yhat_g)``.
    """
    n = Z.shape[0]
    g = np.arange(n) if groups is None else groups
    Zc = Z - Z.mean(axis=0)
    s, U = np.linalg.eigh(Zc @ Zc.T)  # (N,), (N, N)
    s = np.maximum(s, 0.0)
    Yc = Y - Y.mean(axis=0)
    UtY = U.T @ Yc  # (N, C)
    blocks = _blocks_by_size(g)
    out = np.empty((len(alphas), *Y.shape))
    for a, alpha in enumerate(alphas):
        f = s / (s + alpha)  # (N,) shrinkage of each kernel eigen-direction
        resid = Y - (Y.mean(axis=0) + U @ (f[:, None] * UtY))  # (N, C) in-sample residuals
        for idx in blocks:  # (G, m) rows of the G groups of size m
            Ug = U[idx]  # (G, m, N)
            I_H = np.eye(idx.shape[1]) - np.einsum("gik,gjk->gij", Ug * f, Ug) - 1.0 / n  # (G, m, m)
            resid[idx] = np.linalg.pinv(I_H, rcond=1e-10) @ resid[idx]  # held-out residuals (I - H_gg)^-1 r_g
        out[a] = Y - resid
    return out


def select_alpha(loo: FloatArray, Y: FloatArray) -> int:
    """Index of the alpha with the best LOO accuracy, ties broken by the lowest LOO squared error."""
    y_idx = Y.argmax(axis=1)
    acc = (loo.argmax(axis=2) == y_idx).mean(axis=1)  # (A,)
    sse = ((loo - Y) ** 2).sum(axis=(1, 2))  # (A,)
    return int(np.lexsort((sse, -acc))[0])


def select_temperature(loo: FloatArray, y_idx: IntArray) -> float:
    """Softmax temperature minimising the LOO negative log-likelihood of ``loo`` (N, C) decisions."""
    nll = [-np.log(softmax(loo / t)[np.arange(len(y_idx)), y_idx] + 1e-12).mean() for t in TEMPERATURES]
    return float(TEMPERATURES[int(np.argmin(nll))])


class RidgeHead(BaseHead):
    """Multi-output ridge regression on one-hot targets (a.k.a. ridge classifier / shrinkage LDA).

    Features are power-transformed and L2-normalised (see :func:`power_l2`), then the head solves
    ``min ||Z W^T + b - Y||^2 + alpha ||W||^2`` in the dual. ``coef_`` (C, D) and ``intercept_`` (C,)
    apply to the *transformed* features. With ``alpha=None`` it picks alpha from ``alphas`` by exact
    leave-one-out (leave-one-group-out when ``groups`` are passed to ``fit``, e.g. to keep an image and
    its flipped copy together). ``predict_proba`` is ``softmax(decision / temperature_)``, with the
    temperature chosen by LOO log-likelihood unless given.

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

    def _fit_transformed(self, Z: FloatArray, y_idx: IntArray, groups: IntArray) -> RidgeHead:
        C = len(self.classes_)
        Y = np.eye(C)[y_idx]  # (N, C) one-hot
        alphas = self.alphas if self.alpha is None else (self.alpha,)
        loo = ridge_loo_decisions(Z, Y, alphas, groups)
        best = select_alpha(loo, Y) if self.alpha is None else 0
        self.alpha_ = float(alphas[best])
        self.temperature_ = float(self.temperature or select_temperature(loo[best], y_idx))
        self.loo_decision_ = loo[best]  # (N, C) held-out decisions at alpha_, used by AutoHead
        self.Z_, self.y_idx_, self.groups_ = Z, y_idx, groups
        self.Minv_ = np.linalg.inv(Z @ Z.T + self.alpha_ * np.eye(len(Z)))  # (N, N)
        self._solve()
        self.rejector_ = SimilarityRejector(self.reject_quantile).fit(Z, y_idx, C, groups)
        return self

    def _solve(self) -> None:
        """coef_/intercept_ from the dual inverse: ridge with a free intercept (LS-SVM system)."""
        Y = np.eye(len(self.classes_))[self.y_idx_]  # (N, C)
        M1 = self.Minv_.sum(axis=0)  # (N,)  = Minv @ 1 (Minv is symmetric)
        b = (M1 @ Y) / M1.sum()  # (C,)
        A = self.Minv_ @ Y - np.outer(M1, b)  # (N, C) dual coefficients, columns sum to 0
        self.coef_ = A.T @ self.Z_  # (C, D)
        self.intercept_ = b

    def partial_fit(self, X: Any, y: Any) -> RidgeHead:
        """Enrol more samples (and classes) with ``alpha_`` fixed: a bordered update of the dual inverse."""
        if not hasattr(self, "classes_"):
            return self.fit(X, y)
        arr, labels = self._check_fit_inputs(self._check_X(X), y)
        classes, remap = self._merge_classes(labels)
        new_idx = np.searchsorted(classes, labels).astype(np.int64)
        Zn = self._transform(arr)  # (m, D)
        B = self.Z_ @ Zn.T  # (N, m)
        AiB = self.Minv_ @ B  # (N, m)
        S_inv = np.linalg.inv(Zn @ Zn.T + self.alpha_ * np.eye(len(Zn)) - B.T @ AiB)  # (m, m) Schur complement
        top = self.Minv_ + AiB @ S_inv @ AiB.T
        side = -AiB @ S_inv
        self.Minv_ = np.block([[top, side], [side.T, S_inv]])
        self.rejector_.partial_fit(Zn, new_idx, len(classes), remap)
        self.Z_ = np.concatenate([self.Z_, Zn])
        self.y_idx_ = np.concatenate([remap[self.y_idx_], new_idx])
        self.groups_ = np.concatenate([self.groups_, self.groups_.max() + 1 + np.arange(len(Zn))])
        self.classes_ = classes
        self._solve()
        return self

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
