"""``head="auto"``: choose the head and its regularisation by closed-form leave-one-out."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from edgetl_runtime.errors import ConfigError, InputError
from edgetl_runtime.heads.base import BaseHead, FloatArray
from edgetl_runtime.heads.ncm import NearestClassMean, ncm_loo_predictions
from edgetl_runtime.heads.ridge import RidgeHead
from edgetl_runtime.heads.ridge_loo import DEFAULT_ALPHAS, _group_index, loo_scorable

CANDIDATES = ("ridge", "ncm")


class AutoHead(BaseHead):
    """Fits a :class:`RidgeHead` (alpha by LOO) and scores a :class:`NearestClassMean`, keeps the better.

    Selection, all on the enrolled samples only:

    1. Ridge picks its alpha from ``alphas`` by exact leave-one-(group-)out accuracy.
    2. The leave-one-(group-)out accuracy of ridge at that alpha and of NCM are compared over the
       samples whose class keeps at least one other group when they are held out. The better one
       wins; ``prefer`` wins ties (and by ``margin`` accuracy points).
    3. When no class has two groups (one shot per class, no flips), LOO says nothing: ``prefer`` is used
       with its defaults.

    Pass ``groups`` to ``fit`` when several rows come from one image (e.g. it and its horizontal flip),
    so that held-out rows never see their twins. After ``fit``, ``head_`` is the fitted head, ``kind_``
    its name and ``loo_accuracy_`` the LOO accuracies that decided it. ``partial_fit`` enrols into the
    chosen head (no re-selection); call ``fit`` again to re-select.
    """

    kind: ClassVar[str] = "auto"
    _PARAMS: ClassVar[tuple[str, ...]] = ("candidates", "alphas", "prefer", "margin", "power", "reject_quantile")

    def __init__(
        self,
        candidates: tuple[str, ...] | list[str] = CANDIDATES,
        alphas: tuple[float, ...] | list[float] = DEFAULT_ALPHAS,
        prefer: str = "ridge",
        # LOO accuracy on ~50 enrolled samples has a standard error of ~6 points (sqrt(0.75 * 0.25 / 50)),
        # so a smaller margin switches on noise. On Fashion-MNIST grid-pooled features, switches at 0.03
        # cost 0.3-1.9 points per switched episode and ridge was never worse.
        margin: float = 0.06,
        power: float = 0.5,
        reject_quantile: float = 0.05,
    ) -> None:
        self.candidates = tuple(candidates)
        self.alphas = tuple(float(a) for a in alphas)
        self.prefer = prefer
        self.margin = margin
        self.power = power
        self.reject_quantile = reject_quantile

    def _make(self, name: str) -> RidgeHead | NearestClassMean:
        if name == "ridge":
            return RidgeHead(alphas=self.alphas, power=self.power, reject_quantile=self.reject_quantile)
        return NearestClassMean(power=self.power, reject_quantile=self.reject_quantile)

    def fit(self, X: Any, y: Any, groups: Any = None) -> AutoHead:
        """Select and fit the head on ``X`` (N, D), labels ``y`` and optional ``groups`` (see class doc)."""
        if not set(self.candidates) <= set(CANDIDATES) or self.prefer not in self.candidates:
            raise ConfigError(
                f"AutoHead candidates must be within {CANDIDATES} and contain prefer; got {self.get_params()}."
            )
        arr, labels = self._check_fit_inputs(X, y)
        return self._fit_transformed(arr, self._transform(arr), labels, _group_index(groups, len(arr)))

    def _fit_transformed(self, arr: FloatArray, Z: FloatArray, labels: Any, g: npt.NDArray[np.int64]) -> AutoHead:
        """:meth:`fit` once the features ``arr`` are checked and transformed to ``Z`` (a caller that has ``Z``
        already, :class:`~edgetl_runtime.heads.adaptive.AdaptiveHead`, saves a pass over them)."""
        classes, y_idx = np.unique(labels, return_inverse=True)  # encoded once, shared by the candidates
        y_idx = y_idx.ravel().astype(np.int64)
        scored = loo_scorable(y_idx, g, len(classes))  # samples whose class survives their removal
        self.loo_accuracy_: dict[str, float] = {}
        heads: dict[str, RidgeHead | NearestClassMean] = {}
        if "ridge" in self.candidates:
            ridge = RidgeHead(alphas=self.alphas, power=self.power, reject_quantile=self.reject_quantile)
            ridge._validate_params()
            ridge.classes_, ridge.n_features_in_ = classes, arr.shape[1]
            heads["ridge"] = ridge._fit_transformed(Z, y_idx, g, scored)
            if scored.any():
                pred = ridge.loo_decision_.argmax(axis=1)
                self.loo_accuracy_["ridge"] = float((pred == y_idx)[scored].mean())
        if "ncm" in self.candidates and scored.any():
            if "ridge" in heads:  # same features, labels and groups: the rejector already holds NCM's LOO
                pred = heads["ridge"].rejector_.loo_cosines_.argmax(axis=1)
            else:
                pred = ncm_loo_predictions(Z, y_idx, len(classes), g)
            self.loo_accuracy_["ncm"] = float((pred == y_idx)[scored].mean())
        best = self.prefer
        for name, acc in self.loo_accuracy_.items():
            if acc > self.loo_accuracy_.get(best, -1.0) + self.margin:
                best = name
        self.kind_ = best
        if best in heads:
            self.head_ = heads[best]
        elif "ridge" in heads:  # NCM's whole state is the class sums the ridge's rejector already holds
            ncm = NearestClassMean(power=self.power, reject_quantile=self.reject_quantile)
            ncm.classes_, ncm.n_features_in_ = heads["ridge"].classes_, heads["ridge"].n_features_in_
            ncm.rejector_ = heads["ridge"].rejector_
            self.head_ = ncm
        else:
            self.head_ = self._make(best).fit(arr, labels, g)
        self._sync()
        return self

    def _sync(self) -> None:
        self.classes_ = self.head_.classes_
        self.n_features_in_ = self.head_.n_features_in_
        self.rejector_ = self.head_.rejector_

    def partial_fit(self, X: Any, y: Any) -> AutoHead:
        """Enrol into the chosen head (``fit`` first if there is none)."""
        if not hasattr(self, "head_"):
            return self.fit(X, y)
        self.head_.partial_fit(X, y)
        self._sync()
        return self

    def remove_classes(self, labels: Any) -> AutoHead:
        """Forget the given classes in the chosen head."""
        self._check_is_fitted()
        self.head_.remove_classes(labels)
        self._sync()
        return self

    def _decision(self, Z: FloatArray) -> FloatArray:
        return self.head_._decision(Z)

    def _logits(self, Z: FloatArray) -> FloatArray:
        return self.head_._logits(Z)

    def to_npz_dict(self) -> dict[str, npt.NDArray[Any]]:
        """The chosen head's arrays (prefixed ``head__``) plus AutoHead's own params and LOO scores."""
        self._check_is_fitted()
        out = {f"head__{k}": v for k, v in self.head_.to_npz_dict().items()}
        out["kind"] = np.array(self.kind)
        out["params"] = np.array(json.dumps(self.get_params()))
        out["loo_accuracy_"] = np.array(json.dumps(self.loo_accuracy_))
        return out

    @classmethod
    def from_npz_dict(cls, d: dict[str, npt.NDArray[Any]] | Any) -> AutoHead:
        """Rebuild a fitted AutoHead from :meth:`to_npz_dict` output."""
        inner = {k.removeprefix("head__"): np.asarray(d[k]) for k in d.keys() if k.startswith("head__")}
        if str(d.get("kind", "")) != cls.kind or "kind" not in inner:
            raise InputError("Saved data is not an AutoHead written by AutoHead.to_npz_dict().")
        head = cls(**json.loads(str(d["params"])))
        kind = str(inner["kind"])
        if kind not in ("ridge", "ncm"):
            raise InputError(f"AutoHead's saved inner head has unknown kind {kind!r}.")
        head.head_ = RidgeHead.from_npz_dict(inner) if kind == "ridge" else NearestClassMean.from_npz_dict(inner)
        head.kind_ = kind
        head.loo_accuracy_ = {str(k): float(v) for k, v in json.loads(str(d["loo_accuracy_"])).items()}
        head._sync()
        return head
