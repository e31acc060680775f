"""What every few-shot head shares: input checks, label bookkeeping, softmax, rejection, persistence.

Heads follow scikit-learn's estimator contract without importing it: parameters only in
``__init__``, fitted attributes end in ``_``, ``fit`` returns ``self``, :class:`NotFittedError`
before ``fit``, and the message "X has N features, but <Head> is expecting M features as input.".
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt

from edgetl_runtime.errors import InputError, NotFittedError
from edgetl_runtime.heads.rejection import SimilarityRejector

UNKNOWN = "unknown"
"""Label that ``predict(X, reject=True)`` returns for samples far from every enrolled class."""

FloatArray = npt.NDArray[np.floating[Any]]  # float64, or float32 when the features came as float32
IntArray = npt.NDArray[np.int64]
Labels = npt.NDArray[Any]  # (N,) unicode or int64
H = TypeVar("H", bound="BaseHead")


def softmax(logits: FloatArray) -> FloatArray:
    """Row-wise softmax of ``(N, C)`` logits, stable against overflow."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: FloatArray = e / e.sum(axis=1, keepdims=True)
    return out


_RESCALE_ABOVE = 1e15  # float32 squares overflow at 1.8e19; row sums of D of them sooner


def power_l2(X: FloatArray, power: float) -> FloatArray:
    """Signed power transform then L2 normalisation of each row.

    ``power=0.5`` is the square root of non-negative post-ReLU features, which tames the heavy
    tail of a few strongly active channels; ``power=1`` is plain L2 normalisation. float32 input
    stays float32 (see :func:`check_features`).
    """
    X = np.asarray(X, dtype=_working_dtype(X))
    low, high = (float(X.min()), float(X.max())) if X.size else (0.0, 0.0)  # two reductions, no |X| temporary
    if max(-low, high) > _RESCALE_ABOVE:  # squares would overflow: the result is scale-free, so rescale
        X = X / np.maximum(np.abs(X).max(axis=1, keepdims=True), np.finfo(X.dtype).tiny)
        low = float(X.min())
    if power == 0.5 and low >= 0:  # sqrt is much faster than **, and |sqrt(x)|^2 is the row sum of x
        Z = np.sqrt(X)  # (N, D)
        Z *= (1.0 / np.maximum(np.sqrt(X.sum(axis=1, keepdims=True)), 1e-12)).astype(Z.dtype)
        return Z
    if power == 1.0:
        Z = X.copy()
    elif power == 0.5:
        Z = np.sign(X) * np.sqrt(np.abs(X))
    else:
        Z = np.sign(X) * np.abs(X) ** power
    norms = np.sqrt(np.einsum("nd,nd->n", Z, Z))[:, None]
    Z /= np.maximum(norms, 1e-12)
    out: FloatArray = Z
    return out


def _working_dtype(X: Any) -> type[np.floating[Any]]:
    return np.float32 if getattr(X, "dtype", None) == np.float32 else np.float64


def check_features(X: Any, name: str = "X") -> FloatArray:
    """``X`` as a finite, non-empty ``(N, D)`` float array, or an :class:`InputError`.

    float32 features (what every backend returns) stay float32: the D-dimensional products of the
    heads then run at twice float64's speed, and their rounding (~1e-7 relative) is far below what
    the features themselves carry. Everything else becomes float64; small N x N algebra is float64.
    """
    try:
        arr = np.asarray(X, dtype=_working_dtype(X))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a numeric (N, D) array of features; could not convert it: {exc}") from None
    if arr.ndim != 2:
        hint = " Use X.reshape(1, -1) for one sample." if arr.ndim == 1 else ""
        raise InputError(f"{name} must be 2-D (n_samples, n_features), got shape {arr.shape}.{hint}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{name} is empty (shape {arr.shape}); pass at least one sample with at least one feature.")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise InputError(f"{name} contains NaN or infinite values in {bad} row(s); drop or repair those samples.")
    return arr


def check_labels(y: Any, n_samples: int) -> Labels:
    """``y`` as a 1-D unicode or int64 array of ``n_samples`` labels, or an :class:`InputError`."""
    if isinstance(y, np.ndarray) and y.ndim == 1 and len(y) == n_samples:  # fast path, same result
        if y.dtype.kind == "i" or (y.dtype.kind == "u" and y.dtype.itemsize < 8):
            return y.astype(np.int64)
    items = list(y) if not isinstance(y, np.ndarray) else y.tolist()
    if len(items) != n_samples:
        raise InputError(f"y has {len(items)} labels but X has {n_samples} samples; pass one label per row of X.")
    if all(isinstance(v, str) for v in items):
        if UNKNOWN in items:
            raise InputError(f"The label {UNKNOWN!r} is reserved for rejected samples; rename that class.")
        return np.asarray(items, dtype=str)
    if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in items):
        return np.asarray(items, dtype=np.int64)
    kinds = sorted({type(v).__name__ for v in items})
    raise InputError(f"Labels must be all strings or all integers, got types {kinds}; convert them to one type.")


class BaseHead:
    """Common machinery; subclasses implement ``_fit``, ``_decision`` and declare their state."""

    kind: ClassVar[str] = "base"
    _PARAMS: ClassVar[tuple[str, ...]] = ()
    _STATE: ClassVar[tuple[str, ...]] = ()  # fitted array attributes saved by to_npz_dict
    _SCALARS: ClassVar[tuple[str, ...]] = ()  # fitted float attributes saved by to_npz_dict

    classes_: Labels
    n_features_in_: int
    rejector_: SimilarityRejector
    reject_quantile: float
    power: float

    # ----- the estimator contract every head implements ---------------------------------------

    def fit(self: H, X: Any, y: Any, groups: Any = None) -> H:
        """Fit on features ``X`` (N, D), labels ``y``; ``groups`` marks rows of one image, held out together."""
        raise NotImplementedError

    def partial_fit(self: H, X: Any, y: Any) -> H:
        """Enrol more samples (new classes allowed) without refitting from scratch."""
        raise NotImplementedError

    # ----- sklearn-style plumbing -------------------------------------------------------------

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters, as given."""
        return {name: getattr(self, name) for name in self._PARAMS}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _check_is_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with enrolled samples first."
            )

    def _check_X(self, X: Any) -> FloatArray:
        self._check_is_fitted()
        arr = check_features(X)
        if arr.shape[1] != self.n_features_in_:
            raise InputError(
                f"X has {arr.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input."
            )
        return arr

    def _check_fit_inputs(self, X: Any, y: Any) -> tuple[FloatArray, Labels]:
        arr = check_features(X)
        return arr, check_labels(y, arr.shape[0])

    def _merge_classes(self, y: Labels) -> tuple[Labels, IntArray]:
        """Sorted union of known and new classes, and where each old class moved to."""
        if hasattr(self, "classes_") and self.classes_.dtype.kind != y.dtype.kind:
            raise InputError(
                f"New labels are {y.dtype.kind!r}-typed but the head was fitted with {self.classes_.dtype}; "
                "use the same label type (all strings or all integers)."
            )
        old = self.classes_ if hasattr(self, "classes_") else y[:0]
        classes = np.unique(np.concatenate([old, y]))
        return classes, np.searchsorted(classes, old).astype(np.int64)

    # ----- prediction -------------------------------------------------------------------------

    def _decision(self, Z: FloatArray) -> FloatArray:
        raise NotImplementedError

    def _logits(self, Z: FloatArray) -> FloatArray:
        """Scores whose softmax is ``predict_proba``; by default the decision values themselves."""
        return self._decision(Z)

    def _transform(self, X: FloatArray) -> FloatArray:
        return power_l2(X, self.power)

    def decision_function(self, X: Any) -> FloatArray:
        """Class scores ``(N, C)``, columns in ``classes_`` order; the largest one is the prediction."""
        return self._decision(self._transform(self._check_X(X)))

    def predict_proba(self, X: Any) -> FloatArray:
        """Class probabilities ``(N, C)``, columns in ``classes_`` order, rows summing to 1."""
        return softmax(self._logits(self._transform(self._check_X(X))))

    def predict(self, X: Any, reject: bool = False) -> Labels:
        """Predicted labels ``(N,)``.

        With ``reject=True``, samples whose similarity to every enrolled class falls below
        ``reject_threshold_`` get the label :data:`UNKNOWN`; the result is then a unicode array for
        string classes and an object array for integer classes (ints mixed with ``"unknown"``).
        """
        Z = self._transform(self._check_X(X))
        labels: Labels = self.classes_[np.argmax(self._decision(Z), axis=1)]
        if not reject:
            return labels
        known = self.rejector_.score(Z) >= self.rejector_.threshold_
        width = max(len(UNKNOWN), labels.itemsize // 4)
        out: Labels = labels.astype(object) if labels.dtype.kind != "U" else labels.astype(f"<U{width}")
        out[~known] = UNKNOWN
        return out

    @property
    def reject_threshold_(self) -> float:
        """Cosine similarity below which ``predict(X, reject=True)`` answers :data:`UNKNOWN`."""
        self._check_is_fitted()
        return self.rejector_.threshold_

    def similarity(self, X: Any) -> FloatArray:
        """Cosine similarity ``(N,)`` of each sample to its nearest enrolled class mean (rejection score)."""
        return self.rejector_.score(self._transform(self._check_X(X)))

    # ----- persistence ------------------------------------------------------------------------

    def to_npz_dict(self) -> dict[str, npt.NDArray[Any]]:
        """Fitted state as plain arrays for ``np.savez`` (no object arrays; load with ``allow_pickle=False``)."""
        self._check_is_fitted()
        out: dict[str, npt.NDArray[Any]] = {
            "kind": np.array(self.kind),
            "params": np.array(json.dumps(self.get_params())),
            "classes_": self.classes_,
            "n_features_in_": np.array(self.n_features_in_, dtype=np.int64),
        }
        out.update({name: np.asarray(getattr(self, name)) for name in self._STATE})
        out.update({name: np.array(getattr(self, name), dtype=np.float64) for name in self._SCALARS})
        out.update({f"rejector__{k}": v for k, v in self.rejector_.to_npz_dict().items()})
        return out

    @classmethod
    def from_npz_dict(cls: type[H], d: dict[str, npt.NDArray[Any]] | Any) -> H:
        """Rebuild a fitted head from :meth:`to_npz_dict` output (or an ``np.load`` result)."""
        keys = {"kind", "params", "classes_", "n_features_in_", *cls._STATE, *cls._SCALARS}
        missing = sorted(keys - set(d.keys()))
        if missing:
            raise InputError(f"Saved {cls.__name__} is missing {missing}; it was not written by to_npz_dict().")
        if str(d["kind"]) != cls.kind:
            raise InputError(f"Saved head is of kind {str(d['kind'])!r}, not {cls.kind!r}; use head_from_npz_dict().")
        head = cls(**json.loads(str(d["params"])))
        head.classes_ = np.asarray(d["classes_"])
        head.n_features_in_ = int(d["n_features_in_"])
        for name in cls._STATE:
            setattr(head, name, np.array(d[name]))
        for name in cls._SCALARS:
            setattr(head, name, float(d[name]))
        rej = {k.removeprefix("rejector__"): np.asarray(v) for k, v in d.items() if k.startswith("rejector__")}
        head.rejector_ = SimilarityRejector.from_npz_dict(rej)
        return head
