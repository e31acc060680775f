"""Nearest class mean with centring and L2 normalisation (SimpleShot), exact incremental enrolment."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from edgetl_runtime.errors import ConfigError, InputError
from edgetl_runtime.heads.base import BaseHead, FloatArray, IntArray
from edgetl_runtime.heads.prior import Prior, check_prior, prior_rejector
from edgetl_runtime.heads.rejection import SimilarityRejector, class_sums, loo_cosines
from edgetl_runtime.heads.ridge_loo import _group_index


class NearestClassMean(BaseHead):
    """SimpleShot: cosine between the centred query and centred class means.

    Each feature is power-transformed (``power=0.5``: square root of post-ReLU features) and
    L2-normalised; class means are running sums of those vectors, so ``partial_fit`` equals ``fit`` on
    the concatenation exactly. The centre subtracted from queries and means is the mean of the class
    means (enrolled data only). ``predict_proba`` is ``softmax(cosine / temperature)``.

    Args:
        temperature: softmax temperature of ``predict_proba`` (cosines lie in [-1, 1]).
        power: exponent of the signed power transform before L2 normalisation (1 disables it).
        reject_quantile: quantile of the leave-one-out similarities used as rejection threshold.
    """

    kind: ClassVar[str] = "ncm"
    _PARAMS: ClassVar[tuple[str, ...]] = ("temperature", "power", "reject_quantile")

    def __init__(self, temperature: float = 0.05, power: float = 0.5, reject_quantile: float = 0.05) -> None:
        self.temperature = temperature
        self.power = power
        self.reject_quantile = reject_quantile

    def _validate_params(self) -> None:
        if not self.temperature > 0 or not self.power > 0 or not 0.0 <= self.reject_quantile <= 1.0:
            raise ConfigError(
                f"{type(self).__name__} needs temperature > 0, power > 0 and 0 <= reject_quantile <= 1; got "
                f"temperature={self.temperature}, power={self.power}, reject_quantile={self.reject_quantile}."
            )

    def fit(self, X: Any, y: Any, groups: Any = None, prior: Prior | None = None) -> NearestClassMean:
        """Enrol ``X`` (N, D) with labels ``y`` from scratch; ``groups`` only affects rejection calibration.

        With a shipped ``prior`` the class sums start from its statistics (exact: sums add), and ``X`` may be
        None.
        """
        self._validate_params()
        if prior is not None:
            return self._fit_with_prior(X, y, groups, prior)
        arr, labels = self._check_fit_inputs(X, y)
        self.classes_, y_idx = np.unique(labels, return_inverse=True)
        self.n_features_in_ = arr.shape[1]
        g = None if groups is None else np.asarray(groups).ravel()
        if g is not None and len(g) != len(labels):
            raise InputError(f"groups has {len(g)} entries but X has {len(labels)} samples.")
        self.rejector_ = SimilarityRejector(self.reject_quantile)
        self.rejector_.fit(self._transform(arr), y_idx.ravel().astype(np.int64), len(self.classes_), g)
        return self

    def _fit_with_prior(self, X: Any, y: Any, groups: Any, prior: Prior) -> NearestClassMean:
        if X is not None and len(X):
            arr, labels = self._check_fit_inputs(X, y)
        else:
            arr, labels = np.zeros((0, prior.stats.dim)), prior.classes[:0]
        check_prior(self, prior, labels)
        if arr.shape[1] != prior.stats.dim:
            raise InputError(f"X has {arr.shape[1]} features, but the shipped head is expecting {prior.stats.dim}.")
        self.classes_ = np.unique(np.concatenate([prior.classes, labels]))
        self.n_features_in_ = prior.stats.dim
        y_idx = np.searchsorted(self.classes_, labels).astype(np.int64)
        Z = self._transform(arr) if len(arr) else arr
        g = _group_index(groups, len(arr))
        self.rejector_ = prior_rejector(self.reject_quantile, prior, self.classes_, Z, y_idx, g)
        self.prior_ = prior
        return self

    def partial_fit(self, X: Any, y: Any) -> NearestClassMean:
        """Add samples (and possibly new classes) to the running class sums; same result as refitting."""
        if not hasattr(self, "classes_"):
            return self.fit(X, y)
        arr, labels = self._check_fit_inputs(self._check_X(X), y)
        classes, remap = self._merge_classes(labels)
        y_idx = np.searchsorted(classes, labels).astype(np.int64)
        self.rejector_.partial_fit(self._transform(arr), y_idx, len(classes), remap)
        self.classes_ = classes
        return self

    def remove_classes(self, labels: Any) -> NearestClassMean:
        """Forget every sample of the given classes (exact: the sums of the others are untouched)."""
        self._check_is_fitted()
        drop = np.isin(self.classes_, np.asarray(labels))
        if drop.all():
            raise InputError("Cannot remove every class; a head needs at least one enrolled class.")
        keep_idx = np.flatnonzero(~drop).astype(np.int64)
        self.rejector_.keep_classes(keep_idx)
        self.classes_ = self.classes_[keep_idx]
        return self

    @property
    def means_(self) -> FloatArray:
        """Class means ``(C, D)`` of the normalised features, rows in ``classes_`` order."""
        self._check_is_fitted()
        return self.rejector_.means_

    def _decision(self, Z: FloatArray) -> FloatArray:
        return self.rejector_.cosines(Z)  # (N, C) cosine to each centred class mean

    def _logits(self, Z: FloatArray) -> FloatArray:
        return self._decision(Z) / self.temperature


def ncm_loo_predictions(Z: FloatArray, y_idx: IntArray, n_classes: int, groups: IntArray) -> IntArray:
    """Exact leave-one-group-out NCM predictions ``(N,)`` on normalised features ``Z``.

    A sample whose class has no other group left predicts from the remaining classes only, exactly as
    refitting without it would.
    """
    sums, counts = class_sums(Z, y_idx, n_classes)
    sims, _ = loo_cosines(Z, y_idx, sums, counts, groups)
    out: IntArray = np.argmax(sims, axis=1).astype(np.int64)
    return out
