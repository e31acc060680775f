"""Multinomial logistic regression in numpy: L-BFGS on the span of the enrolled samples.

With an L2 penalty the optimal weights lie in the span of the (centred) enrolled features, so with
N << D the problem is solved exactly in an r <= N dimensional basis from the N x N kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from edgetl_runtime.errors import ConfigError
from edgetl_runtime.heads.base import BaseHead, FloatArray, IntArray
from edgetl_runtime.heads.rejection import SimilarityRejector

Objective = Callable[[FloatArray], tuple[float, FloatArray]]


def lbfgs(fun: Objective, x0: FloatArray, max_iter: int = 200, tol: float = 1e-6, memory: int = 10) -> FloatArray:
    """Minimise a smooth convex ``fun`` (returning value and gradient) by L-BFGS with Armijo backtracking."""
    x, (f, g) = x0.copy(), fun(x0)
    S: list[FloatArray] = []
    Yh: list[FloatArray] = []
    for _ in range(max_iter):
        if np.abs(g).max() < tol:
            break
        q, alphas = g.copy(), []
        for s, yv in zip(reversed(S), reversed(Yh), strict=True):  # two-loop recursion
            a = (s @ q) / (yv @ s)
            alphas.append(a)
            q -= a * yv
        q *= (S[-1] @ Yh[-1]) / (Yh[-1] @ Yh[-1]) if S else 1.0 / max(float(np.linalg.norm(g)), 1.0)
        for s, yv, a in zip(S, Yh, reversed(alphas), strict=True):
            q += s * (a - (yv @ q) / (yv @ s))
        step, slope = 1.0, -(g @ q)
        while True:
            x_new = x - step * q
            f_new, g_new = fun(x_new)
            if f_new <= f + 1e-4 * step * slope or step < 1e-10:
                break
            step *= 0.5
        s_k, y_k = x_new - x, g_new - g
        if s_k @ y_k > 1e-12:
            S.append(s_k)
            Yh.append(y_k)
            if len(S) > memory:
                S.pop(0)
                Yh.pop(0)
        x, f, g = x_new, f_new, g_new
    return x


def _objective(P: FloatArray, Y: FloatArray, C: float) -> Objective:
    """``C * sum cross-entropy + 0.5 ||beta||^2`` over params ``[beta (C, r), b (C,)]`` flattened."""
    n_cls, r = Y.shape[1], P.shape[1]

    def fun(x: FloatArray) -> tuple[float, FloatArray]:
        beta, b = x[: n_cls * r].reshape(n_cls, r), x[n_cls * r :]
        logits = P @ beta.T + b  # (N, C)
        top = logits.max(axis=1, keepdims=True)
        e = np.exp(logits - top)
        se = e.sum(axis=1, keepdims=True)
        loss = C * float((np.log(se) + top - (logits * Y).sum(axis=1, keepdims=True)).sum()) + 0.5 * float(
            beta.ravel() @ beta.ravel()
        )
        G = C * (e / se - Y)  # (N, C)
        return loss, np.concatenate([(G.T @ P + beta).ravel(), G.sum(axis=0)])

    return fun


class LogisticHead(BaseHead):
    """L2-regularised multinomial logistic regression (scikit-learn's ``C`` convention).

    Minimises ``C * sum_i CE(softmax(W z_i + b), y_i) + 0.5 ||W||^2`` over power-transformed,
    L2-normalised, centred features, by L-BFGS in the r <= N dimensional span of the enrolled samples
    (exact, as the penalised optimum lies in that span). ``coef_`` (C, D) and ``intercept_`` (C,)
    apply to the transformed features minus ``center_``. There is no exact incremental update:
    ``partial_fit`` refits on the stored features ``Z_`` plus the new ones, warm-started.
    """

    kind: ClassVar[str] = "logistic"
    _PARAMS: ClassVar[tuple[str, ...]] = ("C", "max_iter", "tol", "power", "reject_quantile")
    _STATE: ClassVar[tuple[str, ...]] = ("coef_", "intercept_", "center_", "Z_", "y_idx_")

    def __init__(
        self, C: float = 10.0, max_iter: int = 200, tol: float = 1e-5, power: float = 0.5, reject_quantile: float = 0.05
    ) -> None:
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.power = power
        self.reject_quantile = reject_quantile

    def fit(self, X: Any, y: Any, groups: Any = None) -> LogisticHead:
        """Fit on ``X`` (N, D) and labels ``y``; ``groups`` only affects rejection calibration."""
        if not self.C > 0 or not self.max_iter >= 1 or not self.power > 0:
            raise ConfigError(f"LogisticHead needs C > 0, max_iter >= 1 and power > 0; got {self.get_params()}.")
        arr, labels = self._check_fit_inputs(X, y)
        self.classes_, y_idx = np.unique(labels, return_inverse=True)
        self.n_features_in_ = arr.shape[1]
        Z, y_idx = self._transform(arr), y_idx.ravel().astype(np.int64)
        g = None if groups is None else np.unique(np.asarray(groups).ravel(), return_inverse=True)[1].ravel()
        self.rejector_ = SimilarityRejector(self.reject_quantile).fit(Z, y_idx, len(self.classes_), g)
        return self._fit_transformed(Z, y_idx)

    def _fit_transformed(self, Z: FloatArray, y_idx: IntArray) -> LogisticHead:
        n_cls = len(self.classes_)
        self.Z_, self.y_idx_ = Z, y_idx
        self.center_ = Z.mean(axis=0)  # (D,)
        Zc = Z - self.center_
        s, U = np.linalg.eigh((Zc @ Zc.T).astype(np.float64))  # (N,), (N, N)
        keep = s > 1e-10 * max(float(s.max()), 1e-300)
        P = U[:, keep] * np.sqrt(s[keep])  # (N, r) coordinates of Zc in an orthonormal basis V
        V = Zc.T @ (U[:, keep] / np.sqrt(s[keep])).astype(Zc.dtype)  # (D, r) orthonormal basis of the span
        x0 = np.zeros(n_cls * P.shape[1] + n_cls)
        x = lbfgs(_objective(P, np.eye(n_cls)[y_idx], self.C), x0, self.max_iter, self.tol)
        beta = x[: n_cls * P.shape[1]].reshape(n_cls, -1)
        self.coef_ = beta @ V.T  # (C, D)
        self.intercept_ = x[n_cls * P.shape[1] :]
        return self

    def partial_fit(self, X: Any, y: Any) -> LogisticHead:
        """Add samples (and classes) and refit on everything enrolled so far (no closed-form update exists)."""
        if not hasattr(self, "classes_"):
            return self.fit(X, y)
        arr, labels = self._check_fit_inputs(self._check_X(X), y)
        classes, remap = self._merge_classes(labels)
        new_idx = np.searchsorted(classes, labels).astype(np.int64)
        Zn = self._transform(arr)
        self.rejector_.partial_fit(Zn, new_idx, len(classes), remap)
        self.classes_ = classes
        return self._fit_transformed(np.concatenate([self.Z_, Zn]), np.concatenate([remap[self.y_idx_], new_idx]))

    def _decision(self, Z: FloatArray) -> FloatArray:
        center, coef = self.center_.astype(Z.dtype, copy=False), self.coef_.astype(Z.dtype, copy=False)
        out: FloatArray = (Z - center) @ coef.T + self.intercept_  # (N, C), no float64 copy of float32 Z
        return out
