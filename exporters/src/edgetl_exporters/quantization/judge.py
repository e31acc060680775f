"""Is int8 worse than fp32, beyond noise? Paired estimates with bootstrap intervals.

A few-shot probe over a few hundred images moves by a point between support draws, so a guard that
compares two point estimates keeps nodes in float for nothing. Here fp32 and int8 are scored on the
same episodes (same support images, same queries) with the device's own ``auto`` head, and the
drop's 95 % interval is bootstrapped over both episodes and query images. Without labels, the guard
judges feature agreement (mean cosine to fp32) with an interval over images instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime.fewshot import episode_correctness, support_masks
from edgetl_runtime.numerics import row_cosine

FloatArray = npt.NDArray[np.float32]
BOOTSTRAP_DRAWS = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A paired estimate (``value``) with its bootstrap interval; ``significant`` when it excludes 0."""

    value: float
    low: float
    high: float
    confidence: float = CONFIDENCE

    @property
    def significant(self) -> bool:
        return self.low > 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def paired_difference(first: npt.NDArray[np.float64], second: npt.NDArray[np.float64], seed: int = 0) -> Interval:
    """Mean of ``first - second`` in points over valid (episode, image) cells, bootstrapped over both axes.

    Episodes and images are resampled independently (a two-way bootstrap): the interval covers both
    the luck of the support draw and which images happened to be in the evaluation set.
    """
    valid = ~(np.isnan(first) | np.isnan(second))  # (E, N)
    diff = np.where(valid, np.nan_to_num(first) - np.nan_to_num(second), 0.0)
    mask = valid.astype(np.float64)
    n_episodes, n_images = diff.shape
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n_episodes, np.full(n_episodes, 1.0 / n_episodes), size=BOOTSTRAP_DRAWS).astype(np.float64)
    v = rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=BOOTSTRAP_DRAWS).astype(np.float64)
    num = np.einsum("bn,bn->b", w @ diff, v)  # (B,)
    den = np.maximum(np.einsum("bn,bn->b", w @ mask, v), 1.0)
    draws = 100.0 * num / den
    tail = 100.0 * (1.0 - CONFIDENCE) / 2.0
    low, high = np.percentile(draws, [tail, 100.0 - tail])
    value = 100.0 * float(diff.sum() / max(mask.sum(), 1.0))
    return Interval(value, float(low), float(high))


def mean_accuracy(correct: npt.NDArray[np.float64]) -> float:
    return 100.0 * float(np.nanmean(correct))


def mean_with_interval(values: npt.NDArray[np.float64], seed: int = 0) -> Interval:
    """Mean of per-image values with a bootstrap interval over images (for feature agreement)."""
    rng = np.random.default_rng(seed)
    n = len(values)
    draws = rng.multinomial(n, np.full(n, 1.0 / n), size=BOOTSTRAP_DRAWS) @ values / n  # (B,)
    tail = 100.0 * (1.0 - CONFIDENCE) / 2.0
    low, high = np.percentile(draws, [tail, 100.0 - tail])
    return Interval(float(values.mean()), float(low), float(high))


@dataclass(frozen=True)
class Judgement:
    """One int8 candidate against fp32: feature agreement always, the paired accuracy drop when labelled."""

    cosine: npt.NDArray[np.float64]  # (N,) per-image cosine to fp32
    correct: npt.NDArray[np.float64] | None  # (E, N) episode correctness, None without labels
    drop: Interval | None  # fp32 - int8 accuracy, points
    accuracy_fp32: float | None
    accuracy_quant: float | None

    @property
    def cosine_mean(self) -> float:
        return float(self.cosine.mean())

    @property
    def cosine_min(self) -> float:
        return float(self.cosine.min())

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cosine_mean": self.cosine_mean, "cosine_min": self.cosine_min}
        if self.drop is not None:
            out.update(drop=self.drop.value, drop_interval=[self.drop.low, self.drop.high])
            out.update(accuracy_fp32=self.accuracy_fp32, accuracy_int8=self.accuracy_quant)
        return out


class Judge:
    """Scores int8 candidates against one fp32 reference on fixed episodes (labelled) or images (unlabelled)."""

    def __init__(
        self,
        reference: FloatArray,
        labels: npt.NDArray[Any] | None,
        shots: int = 5,
        n_episodes: int = 10,
        head: str = "auto",
        seed: int = 0,
    ) -> None:
        self.reference, self.labels, self.head, self.seed, self.shots = reference, labels, head, seed, shots
        self.supports = support_masks(labels, shots, n_episodes, seed) if labels is not None else []
        self.reference_correct = (
            episode_correctness(reference, labels, self.supports, head) if labels is not None else None
        )

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def __call__(self, features: FloatArray) -> Judgement:
        cosine = row_cosine(self.reference, features)
        if self.labels is None or self.reference_correct is None:
            return Judgement(cosine, None, None, None, None)
        correct = episode_correctness(features, self.labels, self.supports, self.head)
        drop = paired_difference(self.reference_correct, correct, self.seed)
        return Judgement(cosine, correct, drop, mean_accuracy(self.reference_correct), mean_accuracy(correct))

    def improvement(self, candidate: Judgement, incumbent: Judgement) -> Interval:
        """How much better ``candidate`` is than ``incumbent`` (accuracy points, or cosine when unlabelled)."""
        if candidate.correct is not None and incumbent.correct is not None:
            return paired_difference(candidate.correct, incumbent.correct, self.seed + 1)
        return mean_with_interval(candidate.cosine - incumbent.cosine, self.seed + 1)

    def agreement(self, judgement: Judgement) -> Interval:
        return mean_with_interval(judgement.cosine, self.seed)

    def describe(self) -> dict[str, Any]:
        if self.labelled:
            return {
                "kind": f"paired few-shot accuracy drop (device's '{self.head}' head)",
                "episodes": len(self.supports),
                "shots": self.shots,
                "images": len(self.reference),
                "bootstrap": f"{BOOTSTRAP_DRAWS} draws over episodes x images, {CONFIDENCE:.0%} interval",
            }
        return {
            "kind": "feature agreement with fp32 (unlabelled calibration data: accuracy not measured)",
            "images": len(self.reference),
            "bootstrap": f"{BOOTSTRAP_DRAWS} draws over images, {CONFIDENCE:.0%} interval",
        }
