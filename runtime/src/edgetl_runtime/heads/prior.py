"""A shipped head as a prior: class statistics plus what the host chose for them, and the heads that continue it.

The host fits class statistics (:class:`~edgetl_runtime.heads.stats.ClassStats`) on its labelled data and
picks, on held-out images, the head (``lda`` or ``ncm``), its shrinkage and its softmax temperature.
A device fits a head on that prior *together with* its own enrolled samples: the head's state is the
union of both, so adding samples or classes, forgetting a class and merging devices stay exact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime.errors import ConfigError, InputError
from edgetl_runtime.heads.base import BaseHead, FloatArray, IntArray
from edgetl_runtime.heads.rejection import SimilarityRejector, class_sums, loo_cosines
from edgetl_runtime.heads.stats import ClassStats
from edgetl_runtime.warn import warn

PRIOR_KINDS = ("lda", "ncm")
KEY_BYTES = 16  # 128 bits of a sample key's SHA-256: collision-free at fleet scale, 16 bytes per sample
CLASS_WEIGHTS = ("balanced", None)


def _empty_f64() -> npt.NDArray[np.float64]:
    return np.zeros(0)


def _empty_i64() -> npt.NDArray[np.int64]:
    return np.zeros(0, dtype=np.int64)


def _empty_keys() -> npt.NDArray[np.uint8]:
    return np.zeros((0, KEY_BYTES), dtype=np.uint8)


def key_prefixes(keys: Any) -> npt.NDArray[np.uint8]:
    """``(N, KEY_BYTES)`` first bytes of hex sample keys: how a prior records the samples it already counts."""
    hexes = [str(k)[: 2 * KEY_BYTES] for k in keys]
    if not hexes:
        return _empty_keys()
    return np.frombuffer(bytes.fromhex("".join(hexes)), dtype=np.uint8).reshape(len(hexes), KEY_BYTES).copy()


@dataclass(frozen=True, eq=False)
class Prior:
    """Class statistics with the host's choices for them.

    Attributes:
        stats: the class statistics.
        alpha: LDA shrinkage the host chose on held-out images (for ``class_weight``).
        temperature: softmax temperature of ``predict_proba`` chosen the same way.
        kind: the head the host measured best, which ``head="auto"`` uses: ``"lda"`` or ``"ncm"``.
        class_weight: ``"balanced"`` (every class weighs the same, whatever its count) or None.
        calib_scores: ``(M,)`` rejection similarities of correctly classified held-out host images.
        calib_class: ``(M,)`` class index (into ``stats.classes``) of each score.
        counted_keys: ``(K, 16)`` key prefixes (:func:`key_prefixes`) of device samples a fleet merge folded
            into ``stats``: the device that enrolled them skips them, so nothing counts twice.
        counted_class: ``(K,)`` class index of the label each counted key was counted under. A device skips
            its own sample only when the merge counted it under the label the device gives it: what a merge
            says about an image never overrides the device's own enrolment of it (issue 24, item 4).
    """

    stats: ClassStats
    alpha: float
    temperature: float
    kind: str = "lda"
    class_weight: str | None = "balanced"
    calib_scores: npt.NDArray[np.float64] = field(default_factory=_empty_f64)
    calib_class: npt.NDArray[np.int64] = field(default_factory=_empty_i64)
    counted_keys: npt.NDArray[np.uint8] = field(default_factory=_empty_keys)
    counted_class: npt.NDArray[np.int64] = field(default_factory=_empty_i64)

    def __post_init__(self) -> None:
        problems = []
        if not (np.isfinite(self.alpha) and self.alpha > 0 and np.isfinite(self.temperature) and self.temperature > 0):
            problems.append(f"alpha and temperature must be > 0, got {self.alpha} and {self.temperature}")
        if self.kind not in PRIOR_KINDS or self.class_weight not in CLASS_WEIGHTS:
            problems.append(f"kind must be one of {PRIOR_KINDS} and class_weight one of {CLASS_WEIGHTS}")
        C = len(self.stats.classes)
        if self.calib_scores.shape != self.calib_class.shape or self.calib_scores.ndim != 1:
            problems.append("calib_scores and calib_class must be 1-D arrays of one length")
        elif len(self.calib_class) and not (np.all(self.calib_class >= 0) and np.all(self.calib_class < C)):
            problems.append(f"calib_class must index the {C} classes")
        elif not np.isfinite(self.calib_scores).all():
            problems.append("calib_scores must be finite")
        if self.counted_keys.ndim != 2 or self.counted_keys.shape[1] != KEY_BYTES:
            problems.append(f"counted_keys must have shape (K, {KEY_BYTES}), got {self.counted_keys.shape}")
        elif self.counted_class.shape != (len(self.counted_keys),):
            problems.append(
                f"counted_class must give the label of each of the {len(self.counted_keys)} counted keys, got shape "
                f"{self.counted_class.shape} (a merge by an older edgetl: merge again)"
            )
        elif len(self.counted_class) and not (np.all(self.counted_class >= 0) and np.all(self.counted_class < C)):
            problems.append(f"counted_class must index the {C} classes")
        if problems:
            raise InputError("The shipped head's settings are inconsistent: " + "; ".join(problems) + ".")

    @property
    def classes(self) -> npt.NDArray[Any]:
        return self.stats.classes

    def drop(self, labels: Any) -> Prior | None:
        """The prior without the given classes (exact); None when none is left."""
        stats = self.stats.drop(labels)
        if stats is None:
            return None
        keep = np.isin(self.stats.classes, stats.classes)
        new_index = np.cumsum(keep) - 1
        rows = keep[self.calib_class]
        counted = keep[self.counted_class]  # a dropped class no longer counts its samples
        return replace(
            self,
            stats=stats,
            calib_scores=self.calib_scores[rows],
            calib_class=new_index[self.calib_class[rows]].astype(np.int64),
            counted_keys=self.counted_keys[counted],
            counted_class=new_index[self.counted_class[counted]].astype(np.int64),
        )

    def settings(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "temperature": self.temperature,
            "kind": self.kind,
            "class_weight": self.class_weight,
        }

    def to_npz_dict(self, factor_dtype: Any = np.float32, sums_dtype: Any = np.float32) -> dict[str, npt.NDArray[Any]]:
        return {
            **self.stats.to_npz_dict(factor_dtype, sums_dtype),
            "settings": np.array(json.dumps(self.settings())),
            "calib_scores": self.calib_scores.astype(np.float32),
            "calib_class": self.calib_class.astype(np.int32),
            "counted_keys": self.counted_keys.astype(np.uint8),
            "counted_class": self.counted_class.astype(np.int32),
        }

    def already_counted(self, keys: Any, labels: Any) -> npt.NDArray[np.bool_]:
        """Which hex sample ``keys`` this prior already counts under the matching ``labels`` (a merge folded them
        in); a key it counted under another label is not counted for this one."""
        if not len(self.counted_keys) or not len(keys):
            return np.zeros(len(keys), dtype=bool)
        names = [str(c) for c in self.classes]
        counted = {(row.tobytes(), names[c]) for row, c in zip(self.counted_keys, self.counted_class, strict=True)}
        pairs = zip(key_prefixes(keys), labels, strict=True)
        return np.array([(row.tobytes(), str(label)) in counted for row, label in pairs], dtype=bool)

    @classmethod
    def from_npz_dict(cls, d: dict[str, npt.NDArray[Any]] | Any) -> Prior:
        """Rebuild from :meth:`to_npz_dict` output; any inconsistency is one :class:`InputError`."""
        missing = sorted({"settings", "calib_scores", "calib_class"} - set(d.keys()))
        if missing:
            raise InputError(f"The shipped head lacks {missing}; it was not written by Prior.to_npz_dict().")
        try:
            settings = json.loads(str(d["settings"]))
            known = {"alpha", "temperature", "kind", "class_weight"}
            if not isinstance(settings, dict) or set(settings) != known:
                raise InputError(f"settings must be a JSON object with exactly {sorted(known)}")
            counted_keys = np.asarray(d["counted_keys"], dtype=np.uint8) if "counted_keys" in d else _empty_keys()
            if "counted_class" not in d and len(counted_keys):
                # Merged by an edgetl that did not record the label of each counted key: without it a device
                # cannot tell its own sample from another's claim on the same image, so none is skipped.
                warn(
                    f"The shipped head was merged by an older edgetl: its {len(counted_keys)} counted key(s) carry no "
                    "label, so this device's own samples may count twice in it. Fix: merge again with this edgetl."
                )
                counted_keys = _empty_keys()
            return cls(
                ClassStats.from_npz_dict(d),
                float(settings["alpha"]),
                float(settings["temperature"]),
                str(settings["kind"]),
                None if settings["class_weight"] is None else str(settings["class_weight"]),
                np.asarray(d["calib_scores"], dtype=np.float64),
                np.asarray(d["calib_class"], dtype=np.int64),
                counted_keys,
                np.asarray(d["counted_class"], dtype=np.int64) if "counted_class" in d else _empty_i64(),
            )
        except InputError:
            raise
        except (TypeError, ValueError, json.JSONDecodeError) as exc:
            raise InputError(f"The shipped head's settings cannot be read ({exc}).") from None


def check_prior(head: BaseHead, prior: Prior, labels: npt.NDArray[Any]) -> None:
    """Refuse a prior whose transform or label type differs from the head's and the enrolled labels'."""
    if prior.stats.power != head.power:  # type: ignore[attr-defined]
        raise ConfigError(
            f"The shipped head was fitted with power {prior.stats.power}, but this {type(head).__name__} uses "
            f"power {head.power}; statistics only combine under one transform. Fix: create the head with "  # type: ignore[attr-defined]
            f"power={prior.stats.power}."
        )
    if len(labels) and labels.dtype.kind != prior.classes.dtype.kind:
        raise InputError(
            f"Enrolled labels are {labels.dtype.kind!r}-typed but the shipped classes are {prior.classes.dtype}; "
            "use the same label type (the device uses str)."
        )


def prior_rejector(
    quantile: float,
    prior: Prior | None,
    classes: npt.NDArray[Any],
    Z: FloatArray,
    y_idx: IntArray,
    groups: IntArray | None = None,
) -> SimilarityRejector:
    """A rejector over the prior's and the enrolled samples' class sums, calibrated on the host's held-out
    scores plus the exact leave-one-out scores of the enrolled samples (against the combined sums)."""
    C = len(classes)
    sums, counts = np.zeros((C, Z.shape[1])), np.zeros(C)
    scores, correct, score_class = [np.zeros(0)], [np.zeros(0, dtype=bool)], [np.zeros(0, dtype=np.int64)]
    if prior is not None:
        where = np.searchsorted(classes, prior.classes)
        sums[where] += prior.stats.sums
        counts[where] += prior.stats.counts
        scores.append(prior.calib_scores)
        correct.append(np.ones(len(prior.calib_scores), dtype=bool))
        score_class.append(where[prior.calib_class])
    if len(Z):
        s, n = class_sums(Z, y_idx, C)
        sums, counts = sums + s, counts + n
        g = np.arange(len(Z)) if groups is None else groups
        sims, valid = loo_cosines(Z, y_idx, sums, counts, g)
        scores.append(np.where(valid, sims[np.arange(len(Z)), y_idx], np.nan))
        correct.append(valid & (np.argmax(sims, axis=1) == y_idx))
        score_class.append(y_idx)
    rejector = SimilarityRejector(quantile)
    rejector.counts_ = counts
    rejector.sums_ = sums
    return rejector._set_calibration(np.concatenate(scores), np.concatenate(correct), np.concatenate(score_class))
