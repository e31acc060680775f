"""``AdaptiveHead``: the labelled-only ``auto`` head, adapted to the seen images when that is safe.

``fit(X, y, unlabelled=U)``:

1. the labelled-only :class:`AutoHead` on ``X, y`` (what every other head does; with no usable ``U`` this
   is the answer, unchanged);
2. per class, the mean of the seen images that anchored soft k-means assigns to it
   (:func:`~edgetl_runtime.heads.adapt.stream_prototypes`), added to the shots as one extra sample per class
   and a :class:`RidgeHead` fitted on both (alpha by leave-one-out, as ``auto`` does);
3. the guard: each shot classified by the adapted ridge with the shot held out (exact LOO; the stream means
   do not contain the shots) must do as well as the labelled-only head's own leave-one-out, within
   ``margin``; with one shot per class (no labelled LOO), at least ``min_loo``. Otherwise step 1 stands.

Rejection (``predict(X, reject=True)``, ``similarity``) uses :class:`BackgroundRejector` whichever head
won. ``adaptation_`` says what was used (seen images, repeats and non-finite rows dropped, rounds, the
guard's two accuracies and whether it kept the adaptation).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from edgetl_runtime.errors import InputError
from edgetl_runtime.heads.adapt import AdaptConfig, stream_prototypes
from edgetl_runtime.heads.auto import AutoHead
from edgetl_runtime.heads.base import BaseHead, FloatArray
from edgetl_runtime.heads.open_set import BackgroundRejector
from edgetl_runtime.heads.ridge import RidgeHead
from edgetl_runtime.heads.ridge_loo import DEFAULT_ALPHAS, _group_index
from edgetl_runtime.heads.seen_pool import SeenPool


class AdaptiveHead(BaseHead):
    """Labelled-only ``auto``, or ridge on the shots plus per-class means of the seen images (module doc)."""

    kind: ClassVar[str] = "adaptive"
    _PARAMS: ClassVar[tuple[str, ...]] = ("config", "alphas", "power", "reject_quantile")
    rejector_: BackgroundRejector  # type: ignore[assignment]

    def __init__(
        self,
        config: AdaptConfig | dict[str, Any] | None = None,
        alphas: tuple[float, ...] | list[float] = DEFAULT_ALPHAS,
        power: float = 0.5,
        reject_quantile: float = 0.05,
    ) -> None:
        self.config = AdaptConfig(**config) if isinstance(config, dict) else (config or AdaptConfig())
        self.alphas = tuple(float(a) for a in alphas)
        self.power = power
        self.reject_quantile = reject_quantile

    def get_params(self) -> dict[str, Any]:
        return {**super().get_params(), "config": asdict(self.config)}

    def fit(self, X: Any, y: Any, groups: Any = None, unlabelled: Any = None) -> AdaptiveHead:
        """Fit on labelled ``X`` (N, D), ``y`` and the seen images: ``unlabelled`` is their features (M, D) or a
        :class:`~edgetl_runtime.heads.seen_pool.SeenPool` that keeps them transformed (optional)."""
        arr, labels = self._check_fit_inputs(X, y)
        g = _group_index(groups, len(arr))
        Zs = self._transform(arr)  # (N, D), shared with the labelled-only head
        base = AutoHead(alphas=self.alphas, power=self.power, reject_quantile=self.reject_quantile)
        base._fit_transformed(arr, Zs, labels, g)
        self.classes_, self.n_features_in_ = base.classes_, base.n_features_in_
        y_idx = np.searchsorted(self.classes_, labels).astype(np.int64)
        n_cls = len(self.classes_)
        pool = SeenPool.of(unlabelled, arr.shape[1], self.power, self.config.max_seen)
        U, seen_sum = pool.newest(self.config.max_seen)
        info: dict[str, Any] = {
            "seen": int(len(U)),
            "non_finite_dropped": pool.non_finite,
            "repeats_dropped": pool.repeats,
        }
        self.head_: AutoHead | RidgeHead = base
        kept, background = False, None
        if len(U) >= max(self.config.min_seen, 2 * n_cls) and n_cls >= 2:
            kept, background = self._adapt(base, arr, labels, y_idx, g, Zs, (U, seen_sum), info)
        else:
            info["skipped"] = f"fewer than {max(self.config.min_seen, 2 * n_cls)} distinct seen images, or one class"
            if len(U) >= self.config.min_seen:
                background = seen_sum / len(U)
        info["adapted"] = kept
        self.adaptation_ = info
        self.rejector_ = BackgroundRejector(self.reject_quantile).fit(Zs, y_idx, n_cls, background)
        return self

    def _adapt(
        self,
        base: AutoHead,
        arr: FloatArray,
        labels: Any,
        y_idx: npt.NDArray[np.int64],
        g: npt.NDArray[np.int64],
        Zs: FloatArray,
        seen: tuple[FloatArray, FloatArray],
        info: dict[str, Any],
    ) -> tuple[bool, FloatArray]:
        """Whether the adapted ridge passed the guard (it is then ``head_``), and the seen images' mean."""
        protos = stream_prototypes(Zs, y_idx, len(self.classes_), seen[0], seen[1], self.config)
        has = protos.mass >= self.config.min_mass
        info.update(
            rounds=protos.rounds, prototypes=int(has.sum()), proportions=np.round(protos.proportions, 3).tolist()
        )
        if not has.any():
            return False, protos.seen_mean
        extra = _inverse_transform(protos.means[has], self.power).astype(arr.dtype)  # rows the ridge maps back
        X2 = np.vstack([arr, extra])
        y2 = np.concatenate([labels, self.classes_[has]])
        g2 = np.concatenate([g, g.max(initial=-1) + 1 + np.arange(int(has.sum()))])
        ridge = RidgeHead(alphas=self.alphas, power=self.power, reject_quantile=self.reject_quantile).fit(X2, y2, g2)
        shots = np.arange(len(arr))
        held = ridge.loo_decision_[shots] if hasattr(ridge, "loo_decision_") else None
        adapted_loo = float("nan") if held is None else float((held.argmax(axis=1) == y_idx).mean())
        base_loo = base.loo_accuracy_.get(base.kind_, float("nan"))
        need = self.config.min_loo if np.isnan(base_loo) else base_loo - self.config.margin
        keep = bool(adapted_loo >= need)
        info.update(loo_labelled=_or_none(base_loo), loo_adapted=_or_none(adapted_loo), guard_needs=_or_none(need))
        if keep:
            self.head_ = ridge
        return keep, protos.seen_mean

    def partial_fit(self, X: Any, y: Any) -> AdaptiveHead:
        """Enrol into the head in use (exact rank updates) and the rejector; ``fit`` again to re-adapt."""
        if not hasattr(self, "head_"):
            return self.fit(X, y)
        arr, labels = self._check_fit_inputs(self._check_X(X), y)
        classes, remap = self._merge_classes(labels)
        self.head_.partial_fit(arr, labels)
        y_idx = np.searchsorted(classes, labels).astype(np.int64)
        self.rejector_.partial_fit(self._transform(arr), y_idx, len(classes), remap)
        self.classes_ = classes
        return self

    def remove_classes(self, labels: Any) -> AdaptiveHead:
        """Forget the given classes (in the head in use and the rejector)."""
        self._check_is_fitted()
        drop = np.isin(self.classes_, np.asarray(labels))
        if drop.all():
            raise InputError("Cannot remove every class; a head needs at least one enrolled class.")
        self.head_.remove_classes(labels)
        self.rejector_.keep_classes(np.flatnonzero(~drop).astype(np.int64))
        self.classes_ = self.classes_[~drop]
        return self

    def _decision(self, Z: FloatArray) -> FloatArray:
        return self.head_._decision(Z)

    def _logits(self, Z: FloatArray) -> FloatArray:
        return self.head_._logits(Z)

    @property
    def reject_threshold_(self) -> float:
        self._check_is_fitted()
        return self.rejector_.threshold_

    def to_npz_dict(self) -> dict[str, npt.NDArray[Any]]:
        """The head in use (prefixed ``head__``), the rejector (``rejector__``), params and ``adaptation_``."""
        self._check_is_fitted()
        out = {f"head__{k}": v for k, v in self.head_.to_npz_dict().items()}
        out.update({f"rejector__{k}": v for k, v in self.rejector_.to_npz_dict().items()})
        out["kind"] = np.array(self.kind)
        out["params"] = np.array(json.dumps(self.get_params()))
        out["adaptation_"] = np.array(json.dumps(self.adaptation_))
        return out

    @classmethod
    def from_npz_dict(cls, d: dict[str, npt.NDArray[Any]] | Any) -> AdaptiveHead:  # type: ignore[override]
        """Rebuild a fitted AdaptiveHead from :meth:`to_npz_dict` output."""
        if str(d.get("kind", "")) != cls.kind:
            raise InputError("Saved data is not an AdaptiveHead written by AdaptiveHead.to_npz_dict().")
        inner = {k.removeprefix("head__"): np.asarray(d[k]) for k in d.keys() if k.startswith("head__")}
        rej = {k.removeprefix("rejector__"): np.asarray(d[k]) for k in d.keys() if k.startswith("rejector__")}
        head = cls(**json.loads(str(d["params"])))
        kind = str(inner.get("kind", ""))
        if kind == AutoHead.kind:
            head.head_ = AutoHead.from_npz_dict(inner)
        elif kind == RidgeHead.kind:
            head.head_ = RidgeHead.from_npz_dict(inner)
        else:
            raise InputError(f"AdaptiveHead's saved inner head has unknown kind {kind!r}.")
        head.rejector_ = BackgroundRejector.from_npz_dict(rej)
        head.classes_, head.n_features_in_ = head.head_.classes_, head.head_.n_features_in_
        head.adaptation_ = json.loads(str(d["adaptation_"]))
        return head


def _or_none(value: float) -> float | None:
    """JSON-safe: an undefined leave-one-out accuracy (one shot per class) is None, not NaN."""
    return None if np.isnan(value) else round(float(value), 4)


def _inverse_transform(P: FloatArray, power: float) -> FloatArray:
    """Rows whose power transform + L2 normalisation gives back the unit rows ``P``."""
    out: FloatArray = np.sign(P) * np.abs(P) ** (1.0 / power)
    return out


__all__ = ["AdaptiveHead"]
