"""The int8 guard's statistics: paired differences with two-way bootstrap intervals, and when it acts."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl_exporters.quantization.guard import GuardRule
from edgetl_exporters.quantization.judge import Judge, paired_difference
from edgetl_runtime.fewshot import support_masks

pytestmark = pytest.mark.exporters


def _correct(rng: np.random.Generator, p: float, shape: tuple[int, int]) -> np.ndarray:
    return (rng.random(shape) < p).astype(np.float64)


def test_paired_difference_recovers_a_known_drop_and_covers_it() -> None:
    rng = np.random.default_rng(0)
    base = _correct(rng, 0.75, (10, 2000))
    worse = base.copy()
    flips = rng.random(base.shape) < 0.04  # 4 % of right answers become wrong: a 3-point drop
    worse[flips & (base == 1)] = 0
    est = paired_difference(base, worse)
    assert est.low < est.value < est.high and est.significant
    assert est.value == pytest.approx(100 * (base - worse).mean(), abs=1e-9)
    assert est.low < 3.0 < est.high + 0.5


def test_identical_models_give_an_interval_around_zero() -> None:
    rng = np.random.default_rng(1)
    base = _correct(rng, 0.7, (10, 1000))
    other = base.copy()
    for row in other:  # as many gains as losses in every episode: noise, not a drop
        ones, zeros = np.flatnonzero(row == 1), np.flatnonzero(row == 0)
        row[rng.choice(ones, 30, replace=False)] = 0
        row[rng.choice(zeros, 30, replace=False)] = 1
    est = paired_difference(base, other)
    assert not est.significant and est.low < 0 < est.high
    assert est.high - est.low < 2.0  # 1000 images x 10 episodes resolve a point


def test_support_cells_are_ignored() -> None:
    a = np.array([[1.0, np.nan, 0.0], [np.nan, 1.0, 1.0]])
    b = np.array([[0.0, np.nan, 0.0], [np.nan, 1.0, 0.0]])
    assert paired_difference(a, b).value == pytest.approx(100 * 2 / 4)


def test_episodes_draw_k_shots_per_class_reproducibly() -> None:
    labels = np.repeat(np.arange(4), 10)
    masks = support_masks(labels, 3, 5, seed=7)
    assert len(masks) == 5 and all(np.bincount(labels[m]).tolist() == [3, 3, 3, 3] for m in masks)
    again = support_masks(labels, 3, 5, seed=7)
    assert all((m == n).all() for m, n in zip(masks, again, strict=True))


def _features(rng: np.random.Generator, labels: np.ndarray, noise: float) -> np.ndarray:
    centres = rng.normal(size=(labels.max() + 1, 32))
    return (centres[labels] + noise * rng.normal(size=(len(labels), 32))).astype(np.float32)


def test_rule_acts_only_on_a_significant_drop_beyond_max_drop() -> None:
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(5), 60)
    reference = _features(rng, labels, 1.2)
    judge = Judge(reference, labels, shots=5, n_episodes=6)
    same = judge(reference.copy())
    assert same.drop is not None and same.drop.value == 0.0
    assert not GuardRule(judge, max_drop=-1.0, min_cosine=0.9).fails(same)  # over max_drop but not significant
    damaged = judge(reference + 2.5 * rng.normal(size=reference.shape).astype(np.float32))
    assert damaged.drop is not None and damaged.drop.significant
    assert GuardRule(judge, max_drop=1.0, min_cosine=0.9).fails(damaged)
    # Tolerating the drop is not enough for features this far from fp32 (mean cosine ~0.55): the floor holds.
    assert damaged.cosine_mean < 0.8 and GuardRule(judge, max_drop=damaged.drop.value + 1.0, min_cosine=0.9).fails(
        damaged
    )
    mild = judge(reference + 0.3 * rng.normal(size=reference.shape).astype(np.float32))
    assert mild.drop is not None and mild.cosine_mean > 0.9
    assert not GuardRule(judge, max_drop=max(mild.drop.value, 0.0) + 1.0, min_cosine=0.9).fails(mild)
    assert judge.improvement(same, damaged).significant and not judge.improvement(damaged, same).significant


def test_unlabelled_rule_judges_feature_agreement() -> None:
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(200, 16)).astype(np.float32)
    judge = Judge(reference, None)
    close = judge(reference + 0.1 * rng.normal(size=reference.shape).astype(np.float32))
    far = judge(reference + 2.0 * rng.normal(size=reference.shape).astype(np.float32))
    assert close.drop is None and not GuardRule(judge, 1.0, 0.9).fails(close)
    assert GuardRule(judge, 1.0, 0.9).fails(far)
    assert judge.improvement(close, far).significant
