"""Shrinkage LDA (class-balanced one-hot ridge) over class statistics: the head a shipped prior continues.

With weights ``omega_c`` per class (``1 / n_c`` for ``class_weight="balanced"``: every class weighs the
same whatever its count; 1 for plain ridge), the head solves weighted one-hot ridge regression with a
free intercept. Its normal equations need only each class's count, sum and raw second moment
``G_c = S_c + n_c m_c m_c^T`` (see :mod:`edgetl_runtime.heads.stats`):

    S_w = sum_c omega_c G_c - N_w zbar zbar^T,    N_w = sum_c omega_c n_c,   zbar = sum_c omega_c s_c / N_w
    W^T = (S_w + alpha I)^-1 X,                   X_c = omega_c (s_c - n_c zbar),   b = ybar - W zbar

The D x D matrix is never formed. Every vector involved lies in the span of k "rows" U (the prior's
scatter factors and class sums, and the enrolled samples), so with ``Q = U U^T`` kept up to date
(bordered by each enrolment, O(k D)) the solve is a k x k system (Woodbury) plus one rank-one
correction (Sherman-Morrison for ``- N_w zbar zbar^T``): O(k^3 + C k D) per fit, whatever D is.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from edgetl_runtime.errors import ConfigError, InputError
from edgetl_runtime.heads.base import BaseHead, FloatArray, IntArray, Labels
from edgetl_runtime.heads.prior import Prior, check_prior, prior_rejector
from edgetl_runtime.heads.ridge_loo import FALLBACK_TEMPERATURE, _group_index
from edgetl_runtime.heads.stats import ClassStats

F64 = npt.NDArray[np.float64]
# Shrinkage without a prior (no held-out data to choose it): on unit-norm features with balanced weights the
# within-class scatter has trace ~0.1-0.3 per class; Fashion-MNIST Lite0 features peaked at 1e-3..1e-2.
DEFAULT_ALPHA = 3e-3
_FACTOR, _PRIOR_SUM, _ENROLLED = 0, 1, 2


class _Rows:
    """Rows ``U`` (k, D) float64 and their Gram ``Q = U U^T``, both grown by appending (capacity doubles)."""

    def __init__(self, U: F64) -> None:
        self._u = np.array(U, dtype=np.float64)
        self._q = self._u @ self._u.T
        self.k = len(self._u)

    @property
    def U(self) -> F64:
        return self._u[: self.k]

    @property
    def Q(self) -> F64:
        return self._q[: self.k, : self.k]

    def append(self, R: F64) -> None:
        k, m = self.k, len(R)
        cross = self.U @ R.T  # (k, m)
        if k + m > len(self._u):
            cap = max(2 * len(self._u), k + m, 16)
            u, q = np.zeros((cap, self._u.shape[1])), np.zeros((cap, cap))
            u[:k], q[:k, :k] = self.U, self.Q
            self._u, self._q = u, q
        self._u[k : k + m] = R
        self._q[:k, k : k + m] = cross
        self._q[k : k + m, :k] = cross.T
        self._q[k : k + m, k : k + m] = R @ R.T
        self.k = k + m


class LDAHead(BaseHead):
    """Class-weighted one-hot ridge (shrinkage LDA) over class statistics, optionally continuing a prior.

    ``fit(X, y, prior=p)`` fits on the union of the prior's statistics and the enrolled samples (either may
    be empty, not both). ``partial_fit`` appends samples and re-solves exactly (same as ``fit`` on
    everything); ``remove_classes`` forgets shipped and enrolled classes alike. ``alpha=None`` takes the
    prior's (chosen by the host on held-out images; converted when the prior's ``class_weight`` differs),
    else :data:`DEFAULT_ALPHA`. ``stats_`` returns the head's whole state as :class:`ClassStats` (what a
    fleet merge adds up).
    """

    kind: ClassVar[str] = "lda"
    _PARAMS: ClassVar[tuple[str, ...]] = ("alpha", "class_weight", "temperature", "power", "reject_quantile")
    coef_: F64
    intercept_: F64

    def __init__(
        self,
        alpha: float | None = None,
        class_weight: str | None = "balanced",
        temperature: float | None = None,
        power: float = 0.5,
        reject_quantile: float = 0.05,
    ) -> None:
        self.alpha = alpha
        self.class_weight = class_weight
        self.temperature = temperature
        self.power = power
        self.reject_quantile = reject_quantile

    def _validate_params(self) -> None:
        bad_alpha = self.alpha is not None and not self.alpha > 0
        bad_t = self.temperature is not None and not self.temperature > 0
        if bad_alpha or bad_t or not self.power > 0 or self.class_weight not in ("balanced", None):
            raise ConfigError(
                f"LDAHead needs alpha None or > 0, temperature None or > 0, power > 0 and class_weight 'balanced' "
                f"or None; got {self.get_params()}."
            )

    # ------------------------------------------------------------------ fitting

    def fit(self, X: Any, y: Any, groups: Any = None, prior: Prior | None = None) -> LDAHead:
        """Fit on enrolled ``X`` (N, D), labels ``y`` and an optional ``prior`` (``X`` may be None with a prior)."""
        self._validate_params()
        if prior is None or (X is not None and len(X)):
            arr, labels = self._check_fit_inputs(X, y)
        else:
            arr, labels = np.zeros((0, prior.stats.dim)), prior.classes[:0]
        if prior is not None:
            check_prior(self, prior, labels)
            if arr.shape[1] != prior.stats.dim:
                raise InputError(
                    f"X has {arr.shape[1]} features, but the shipped head is expecting {prior.stats.dim} features."
                )
        prior_classes = prior.classes if prior is not None else labels[:0]
        classes = np.unique(np.concatenate([prior_classes, labels]))
        y_idx = np.searchsorted(classes, labels).astype(np.int64)
        Z = self._transform(arr).astype(np.float64) if len(arr) else np.zeros((0, arr.shape[1]))
        return self._fit_transformed(Z, y_idx, classes, _group_index(groups, len(Z)), prior)

    def _fit_transformed(
        self, Z: F64, y_idx: IntArray, classes: Labels, groups: IntArray, prior: Prior | None
    ) -> LDAHead:
        C, D = len(classes), Z.shape[1]
        self.classes_, self.n_features_in_, self.prior_ = classes, D, prior
        self.alpha_ = self._resolve_alpha(prior)
        self._n_prior, self._residual = np.zeros(C), np.zeros(C)
        blocks, row_class, row_kind = [], [], []
        if prior is not None:
            where = np.searchsorted(classes, prior.classes)
            st = prior.stats
            self._n_prior[where], self._residual[where] = st.counts, st.residual
            blocks += [st.factors, st.sums]
            row_class += [where[st.factor_class], where]
            row_kind += [np.full(len(st.factors), _FACTOR), np.full(len(where), _PRIOR_SUM)]
        blocks.append(Z)
        row_class.append(y_idx)
        row_kind.append(np.full(len(Z), _ENROLLED))
        self._rows = _Rows(np.concatenate(blocks) if blocks else np.zeros((0, D)))
        self._row_class = np.concatenate(row_class).astype(np.int64)
        self._row_kind = np.concatenate(row_kind).astype(np.int64)
        self._n_enrolled = np.bincount(y_idx, minlength=C).astype(np.float64)
        self.y_idx_, self.groups_ = y_idx, groups
        self._solve()
        self.rejector_ = prior_rejector(self.reject_quantile, prior, classes, Z, y_idx, groups)
        return self

    def _resolve_alpha(self, prior: Prior | None) -> float:
        if self.alpha is not None:
            return float(self.alpha)
        if prior is None:
            return DEFAULT_ALPHA
        if prior.class_weight == self.class_weight:
            return prior.alpha
        # Multiplying every sample weight by k is the same fit as dividing alpha by k; balanced weights are
        # 1 / n_c, so the two weightings differ by about the mean class count.
        mean_count = float(prior.stats.counts.mean())
        return prior.alpha * mean_count if self.class_weight is None else prior.alpha / mean_count

    def _solve(self) -> None:
        """``coef_`` and ``intercept_`` from the rows' Gram matrix (see the module docstring)."""
        C, k, D = len(self.classes_), self._rows.k, self.n_features_in_
        Q, rc, kind = self._rows.Q, self._row_class, self._row_kind
        n = self._n_prior + self._n_enrolled  # (C,)
        omega = 1.0 / n if self.class_weight == "balanced" else np.ones(C)
        n_w = float((omega * n).sum())
        w = omega[rc].copy()  # (k,) weight of each row in sum_c omega_c G_c
        psum = kind == _PRIOR_SUM
        w[psum] /= self._n_prior[rc[psum]]  # n_p m m^T = s s^T / n_p
        is_sum = kind != _FACTOR  # rows that add up to the class sums
        t = np.where(is_sum, omega[rc] / n_w, 0.0)  # zbar = U^T t
        B = np.zeros((k, C + 1))  # coefficient columns: X_c (C of them), then zbar
        B[np.flatnonzero(is_sum), rc[is_sum]] = omega[rc[is_sum]]
        B[:, :C] -= np.outer(t, omega * n)
        B[:, C] = t
        beta = self.alpha_ + float((omega * self._residual).sum()) / D
        s = np.sqrt(w)
        A = beta * np.eye(k) + s[:, None] * Q * s[None, :]  # (k, k) SPD
        QB = Q @ B
        G = (B - s[:, None] * np.linalg.solve(A, s[:, None] * QB)) / beta  # G^-1 U^T B, as coefficients
        gx, gv = G[:, :C], G[:, C]
        Qt = QB[:, C]  # Q t
        denom = 1.0 - n_w * float(Qt @ gv)  # > 0 because S_w + alpha I is positive definite
        coef_u = gx + np.outer(gv, n_w * (Qt @ gx) / denom)  # (k, C): W^T = U^T coef_u
        self.coef_ = coef_u.T @ self._rows.U  # (C, D)
        self.intercept_ = omega * n / n_w - coef_u.T @ Qt

    def partial_fit(self, X: Any, y: Any) -> LDAHead:
        """Enrol more samples (new classes allowed): the rows grow by the samples and the head is re-solved
        exactly (the same as ``fit`` on everything), in O(k D + k^3)."""
        if not hasattr(self, "classes_"):
            return self.fit(X, y)
        arr, labels = self._check_fit_inputs(self._check_X(X), y)
        classes, remap = self._merge_classes(labels)
        new_idx = np.searchsorted(classes, labels).astype(np.int64)
        C = len(classes)
        if C != len(self.classes_):
            self._row_class = remap[self._row_class]
            for name in ("_n_prior", "_residual", "_n_enrolled"):
                grown = np.zeros(C)
                grown[remap] = getattr(self, name)
                setattr(self, name, grown)
        Zn = self._transform(arr).astype(np.float64)
        self._rows.append(Zn)
        self._row_class = np.concatenate([self._row_class, new_idx])
        self._row_kind = np.concatenate([self._row_kind, np.full(len(Zn), _ENROLLED)])
        self._n_enrolled += np.bincount(new_idx, minlength=C)
        start = int(self.groups_.max()) + 1 if len(self.groups_) else 0
        self.y_idx_ = np.concatenate([remap[self.y_idx_], new_idx])
        self.groups_ = np.concatenate([self.groups_, start + np.arange(len(Zn))])
        self.classes_ = classes
        self._solve()
        self.rejector_.partial_fit(Zn, new_idx, C, remap)
        return self

    def remove_classes(self, labels: Any) -> LDAHead:
        """Forget the given classes, shipped or enrolled (exact: their statistics are simply left out)."""
        self._check_is_fitted()
        drop = np.isin(self.classes_, np.asarray(labels))
        if drop.all():
            raise InputError("Cannot remove every class; a head needs at least one class.")
        keep = ~drop[self.y_idx_]
        prior = None if self.prior_ is None else self.prior_.drop(self.classes_[drop])
        classes = self.classes_[~drop]
        y_idx = np.searchsorted(classes, self.classes_[self.y_idx_[keep]]).astype(np.int64)
        return self._fit_transformed(self.Z_[keep], y_idx, classes, self.groups_[keep], prior)

    # ------------------------------------------------------------------ state

    @property
    def Z_(self) -> F64:
        """Transformed enrolled features ``(N, D)`` (the prior's samples are only statistics)."""
        out: F64 = self._rows.U[self._row_kind == _ENROLLED]
        return out

    @property
    def stats_(self) -> ClassStats:
        """Everything the head knows as class statistics: the prior's plus the enrolled samples' (exact)."""
        self._check_is_fitted()
        present = np.unique(self.y_idx_)
        mine = None
        if len(present):
            idx = np.searchsorted(present, self.y_idx_).astype(np.int64)
            mine = ClassStats.from_transformed(self.Z_, idx, self.classes_[present], self.power)
        if self.prior_ is None:
            assert mine is not None
            return mine
        return self.prior_.stats if mine is None else self.prior_.stats.merge(mine)

    @property
    def temperature_(self) -> float:
        """``temperature`` if given, else the prior's (chosen by the host), else the ridge head's fallback."""
        if self.temperature is not None:
            return float(self.temperature)
        return self.prior_.temperature if self.prior_ is not None else FALLBACK_TEMPERATURE

    def _decision(self, Z: FloatArray) -> FloatArray:
        out: FloatArray = Z @ self.coef_.T.astype(Z.dtype, copy=False) + self.intercept_  # (N, C)
        return out

    def _logits(self, Z: FloatArray) -> FloatArray:
        return self._decision(Z) / self.temperature_

    def to_npz_dict(self) -> dict[str, npt.NDArray[Any]]:
        """The head as its combined statistics (prior + enrolled, exact) and settings; reloads to the same head."""
        self._check_is_fitted()
        prior = Prior(
            self.stats_,
            self.alpha_,
            self.temperature_,
            "lda",
            self.class_weight,
            np.asarray(self.rejector_.scores_[self.rejector_.correct_], dtype=np.float64),
            self.rejector_.score_class_[self.rejector_.correct_],
        )
        return {
            "kind": np.array(self.kind),
            "params": np.array(json.dumps(self.get_params())),
            **{f"prior__{k}": v for k, v in prior.to_npz_dict(np.float64, np.float64).items()},
            **{f"rejector__{k}": v for k, v in self.rejector_.to_npz_dict().items()},
        }

    @classmethod
    def from_npz_dict(cls, d: dict[str, npt.NDArray[Any]] | Any) -> LDAHead:
        """Rebuild a fitted head from :meth:`to_npz_dict` output."""
        from edgetl_runtime.heads.rejection import SimilarityRejector

        if str(d.get("kind", "")) != cls.kind:
            raise InputError("Saved data is not an LDAHead written by LDAHead.to_npz_dict().")
        head = cls(**json.loads(str(d["params"])))
        prior = Prior.from_npz_dict({k.removeprefix("prior__"): d[k] for k in d.keys() if k.startswith("prior__")})
        head._validate_params()
        empty = np.zeros(0, np.int64)
        head._fit_transformed(np.zeros((0, prior.stats.dim)), empty, prior.classes, empty, prior)
        rej = {k.removeprefix("rejector__"): np.asarray(d[k]) for k in d.keys() if k.startswith("rejector__")}
        head.rejector_ = SimilarityRejector.from_npz_dict(rej)
        return head
