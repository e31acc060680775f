"""A shipped head in the device heads' own terms: class statistics that heads continue, exactly where additive."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl_runtime.errors import ConfigError, InputError, NotFittedError
from edgetl_runtime.heads import ClassStats, LDAHead, NearestClassMean, Prior, create_head, head_from_npz_dict
from edgetl_runtime.heads.base import power_l2
from edgetl_runtime.heads.stats import top_rows

pytestmark = pytest.mark.runtime


def _data(n: int = 240, dim: int = 24, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.array([f"c{i % classes}" for i in range(n)])
    X = rng.random((n, dim)) ** 2
    X[np.arange(n), np.arange(n) % classes] += 1.5  # each class lights up its own channel
    return X.astype(np.float32), y


def _dense_lda(Z: np.ndarray, y: np.ndarray, alpha: float, balanced: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Weighted one-hot ridge with a free intercept, solved densely in D x D (the reference)."""
    classes = np.unique(y)
    Y = (y[:, None] == classes[None]).astype(float)
    w = 1.0 / Y.sum(axis=0)[np.searchsorted(classes, y)] if balanced else np.ones(len(y))
    zbar, ybar = (w @ Z) / w.sum(), (w @ Y) / w.sum()
    Zc, Yc = Z - zbar, Y - ybar
    W = np.linalg.solve(Zc.T @ (w[:, None] * Zc) + alpha * np.eye(Z.shape[1]), Zc.T @ (w[:, None] * Yc))
    return W.T, ybar - zbar @ W


def test_stats_merge_and_drop_are_exact() -> None:
    X, y = _data()
    whole = ClassStats.from_features(X, y)
    merged = ClassStats.from_features(X[:100], y[:100]).merge(ClassStats.from_features(X[100:], y[100:]))
    assert list(merged.classes) == list(whole.classes)
    np.testing.assert_allclose(merged.sums, whole.sums, atol=1e-9)
    np.testing.assert_array_equal(merged.counts, whole.counts)
    for c in range(len(whole.classes)):
        np.testing.assert_allclose(merged.scatter(c), whole.scatter(c), atol=1e-9)
    dropped = whole.drop(["c1"])
    assert dropped is not None and list(dropped.classes) == ["c0", "c2", "c3"]
    np.testing.assert_allclose(dropped.scatter(1), whole.scatter(2))
    assert whole.drop(list(whole.classes)) is None


def test_compress_keeps_the_trace_and_is_exact_up_to_rank_plus_one_samples() -> None:
    X, y = _data()
    exact = ClassStats.from_features(X, y)
    small = exact.compress(5)
    assert np.bincount(small.factor_class).max() <= 5
    for c in range(4):
        assert np.trace(small.scatter(c)) == pytest.approx(np.trace(exact.scatter(c)))
    few = ClassStats.from_features(X[:24], y[:24])  # 6 samples per class: scatter of rank 5
    np.testing.assert_allclose(few.compress(5).scatter(0), few.scatter(0), atol=1e-9)
    rows, lost = top_rows(np.random.default_rng(0).normal(size=(50, 30)), 30)  # full rank kept: nothing lost
    assert lost == pytest.approx(0.0, abs=1e-9) and rows.shape == (30, 30)


def test_stats_refuse_inconsistent_arrays_naming_each_problem() -> None:
    stats = ClassStats.from_features(*_data())
    d = stats.to_npz_dict()
    with pytest.raises(InputError, match="counts must be") as info:
        ClassStats.from_npz_dict({**d, "counts": -d["counts"], "factor_class": d["factor_class"] + 9})
    assert "factor_class" in str(info.value)
    with pytest.raises(InputError, match="lack"):
        ClassStats.from_npz_dict({k: v for k, v in d.items() if k != "sums"})
    with pytest.raises(InputError, match="width 8"):
        stats.merge(ClassStats.from_features(_data(dim=8)[0], _data(dim=8)[1]))


@pytest.mark.parametrize("balanced", [True, False])
def test_lda_with_prior_equals_the_dense_solution_on_every_sample(balanced: bool) -> None:
    X, y = _data()
    prior = Prior(ClassStats.from_features(X[:200], y[:200]), alpha=0.05, temperature=0.1)
    head = LDAHead(class_weight="balanced" if balanced else None, alpha=0.05).fit(X[200:], y[200:], prior=prior)
    W, b = _dense_lda(power_l2(X.astype(np.float64), 0.5), y, 0.05, balanced)
    np.testing.assert_allclose(head.coef_, W, atol=1e-6 * np.abs(W).max())
    np.testing.assert_allclose(head.intercept_, b, atol=1e-6)


def test_lda_partial_fit_and_new_classes_equal_a_full_fit() -> None:
    X, y = _data()
    prior = Prior(ClassStats.from_features(X[:200], y[:200]), alpha=0.05, temperature=0.1)
    incremental = LDAHead().fit(None, None, prior=prior)
    assert list(incremental.classes_) == ["c0", "c1", "c2", "c3"]  # the prior alone predicts
    for i in range(200, 240, 7):
        incremental.partial_fit(X[i : i + 7], y[i : i + 7])
    new = _data(12, seed=5)[0] + 3.0
    incremental.partial_fit(new, ["new"] * 12)
    full = LDAHead().fit(np.concatenate([X[200:], new]), np.concatenate([y[200:], ["new"] * 12]), prior=prior)
    np.testing.assert_allclose(incremental.coef_, full.coef_, atol=1e-9)
    np.testing.assert_allclose(incremental.intercept_, full.intercept_, atol=1e-9)
    assert (incremental.predict(new) == "new").all()


def test_lda_forgets_shipped_and_enrolled_classes_and_saves_its_statistics() -> None:
    X, y = _data()
    prior = Prior(ClassStats.from_features(X[:200], y[:200]), alpha=0.05, temperature=0.1)
    head = LDAHead().fit(X[200:], y[200:], prior=prior).remove_classes(["c1"])
    reference = LDAHead().fit(X[200:][y[200:] != "c1"], y[200:][y[200:] != "c1"], prior=prior.drop(["c1"]))
    np.testing.assert_allclose(head.coef_, reference.coef_, atol=1e-12)
    whole = ClassStats.from_features(X[y != "c1"], y[y != "c1"])
    for c in range(3):
        np.testing.assert_allclose(head.stats_.scatter(c), whole.scatter(c), atol=1e-6)
    again = head_from_npz_dict(head.to_npz_dict())
    assert isinstance(again, LDAHead)
    np.testing.assert_allclose(again.decision_function(X), head.decision_function(X), atol=1e-9)
    with pytest.raises(InputError, match="every class"):
        head.remove_classes(["c0", "c2", "c3"])


def test_ncm_with_prior_equals_ncm_on_every_sample() -> None:
    X, y = _data()
    prior = Prior(ClassStats.from_features(X[:200], y[:200]), alpha=0.05, temperature=0.1)
    with_prior, plain = NearestClassMean().fit(X[200:], y[200:], prior=prior), NearestClassMean().fit(X, y)
    np.testing.assert_allclose(with_prior.rejector_.sums_, plain.rejector_.sums_, atol=1e-5)
    np.testing.assert_allclose(with_prior.decision_function(X), plain.decision_function(X), atol=1e-5)
    assert list(NearestClassMean().fit(None, None, prior=prior).classes_) == ["c0", "c1", "c2", "c3"]


def test_heads_refuse_a_prior_they_cannot_continue() -> None:
    from edgetl_runtime.heads import fit_with_prior, head_for_prior

    X, y = _data()
    prior = Prior(ClassStats.from_features(X, y), alpha=0.05, temperature=0.1)
    assert head_for_prior("auto", prior).kind == "lda"
    assert head_for_prior("adaptive", prior).kind == "lda"  # the default head continues the host's choice too
    ridge = head_for_prior("ridge", prior)
    assert isinstance(ridge, LDAHead) and ridge.class_weight is None
    with pytest.raises(ConfigError, match="cannot continue"):
        head_for_prior("logistic", prior)
    with pytest.raises(ConfigError, match="power"):
        LDAHead(power=1.0).fit(None, None, prior=prior)
    with pytest.raises(InputError, match="expecting 24"):
        LDAHead().fit(X[:, :8], y, prior=prior)
    with pytest.raises(InputError, match="same label type"):
        LDAHead().fit(X, np.arange(len(y)), prior=prior)
    with pytest.raises(NotFittedError):
        fit_with_prior("auto", np.zeros((0, 24)), np.zeros(0, dtype=str), None)
    with pytest.raises(InputError, match="alpha and temperature"):
        Prior(prior.stats, alpha=0.0, temperature=0.1)
    assert create_head("lda").kind == "lda"


def test_prior_round_trips_through_npz_with_float16_factors() -> None:
    X, y = _data()
    prior = Prior(ClassStats.from_features(X, y, rank=6), alpha=0.05, temperature=0.2, kind="ncm")
    again = Prior.from_npz_dict(prior.to_npz_dict(np.float16))
    assert again.kind == "ncm" and again.temperature == 0.2
    np.testing.assert_allclose(again.stats.factors, prior.stats.factors, rtol=2e-3, atol=1e-4)
    with pytest.raises(InputError, match="settings"):
        Prior.from_npz_dict({**prior.to_npz_dict(), "settings": np.array('{"alpha": 1}')})
