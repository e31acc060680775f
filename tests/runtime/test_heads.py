"""Contract and maths tests of the few-shot heads on synthetic Gaussian clusters (no torch)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest

from edgetl_runtime.errors import ConfigError, InputError, NotFittedError
from edgetl_runtime.heads import (
    HEADS,
    UNKNOWN,
    AutoHead,
    LogisticHead,
    NearestClassMean,
    RidgeHead,
    create_head,
    head_from_npz_dict,
)
from edgetl_runtime.heads.base import power_l2
from edgetl_runtime.heads.bordered import BorderedInverse
from edgetl_runtime.heads.ncm import ncm_loo_predictions
from edgetl_runtime.heads.ridge_loo import FALLBACK_TEMPERATURE, loo_temperature, ridge_loo_decisions, shifted_inverses

pytestmark = pytest.mark.runtime

D = 64
# The contract tests below run on every head the package registers (a new head joins them by registering).
FACTORIES: dict[str, Any] = {**HEADS, AutoHead.kind: AutoHead}


def clusters(n_per_class: int, n_classes: int = 4, seed: int = 0, spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative (post-ReLU-like) Gaussian clusters around fixed class centres."""
    centres = np.abs(np.random.default_rng(123).normal(size=(n_classes, D))) * 3.0
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = np.abs(centres[y] + spread * rng.normal(size=(len(y), D)))
    return X, y


@pytest.fixture(params=sorted(FACTORIES))
def make_head(request: pytest.FixtureRequest) -> Any:
    return FACTORIES[request.param]


def test_contract_fit_predict(make_head: Any) -> None:
    X, y = clusters(5)
    Xt, yt = clusters(20, seed=1)
    head = make_head()
    assert head.fit(X, y) is head
    assert head.n_features_in_ == D
    np.testing.assert_array_equal(head.classes_, np.arange(4))
    proba = head.predict_proba(Xt)
    assert proba.shape == (len(Xt), 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(head.classes_[proba.argmax(axis=1)], head.predict(Xt))
    assert head.decision_function(Xt).shape == (len(Xt), 4)
    assert (head.predict(Xt) == yt).mean() > 0.9


def test_string_labels_sorted_and_one_shot(make_head: Any) -> None:
    X, y = clusters(1)
    names = np.array(["zebra", "ant", "moose", "bee"])
    head = make_head().fit(X, names[y])
    assert list(head.classes_) == ["ant", "bee", "moose", "zebra"]
    Xt, yt = clusters(10, seed=2)
    assert (head.predict(Xt) == names[yt]).mean() > 0.8
    # predict_proba columns follow classes_ order
    np.testing.assert_array_equal(head.classes_[head.predict_proba(Xt).argmax(axis=1)], head.predict(Xt))


@pytest.mark.parametrize("factory", [NearestClassMean, lambda: RidgeHead(alpha=0.3)])
def test_partial_fit_equals_fit_on_concatenation(factory: Any) -> None:
    X, y = clusters(6)
    Xt, _ = clusters(5, seed=3)
    labels = np.array(["a", "b", "c", "d"])[y]
    first = y < 2  # the second batch brings two new classes
    inc = factory().fit(X[first], labels[first]).partial_fit(X[~first][:3], labels[~first][:3])
    inc.partial_fit(X[~first][3:], labels[~first][3:])
    full = factory().fit(np.concatenate([X[first], X[~first]]), np.concatenate([labels[first], labels[~first]]))
    np.testing.assert_array_equal(inc.classes_, full.classes_)
    np.testing.assert_allclose(inc.decision_function(Xt), full.decision_function(Xt), atol=1e-9)


def test_logistic_partial_fit_adds_class() -> None:
    X, y = clusters(4)
    head = LogisticHead().fit(X[y < 3], y[y < 3]).partial_fit(X[y == 3], y[y == 3])
    np.testing.assert_array_equal(head.classes_, np.arange(4))
    assert (head.predict(X) == y).mean() > 0.9


@pytest.mark.parametrize("factory", [NearestClassMean, RidgeHead, AutoHead])
def test_remove_classes(factory: Any) -> None:
    X, y = clusters(5)
    head = factory().fit(X, y).remove_classes([1])
    np.testing.assert_array_equal(head.classes_, [0, 2, 3])
    ref = factory().fit(X[y != 1], y[y != 1])
    np.testing.assert_allclose(head.predict_proba(X), ref.predict_proba(X), atol=1e-9)
    with pytest.raises(InputError):
        head.remove_classes([0, 2, 3])


def test_npz_round_trip(make_head: Any) -> None:
    X, y = clusters(3)
    labels = np.array(["cat", "dog", "owl", "eel"])[y]
    head = make_head().fit(X, labels)
    buf = io.BytesIO()
    np.savez(buf, **head.to_npz_dict())
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as data:
        loaded = head_from_npz_dict(data)
    assert type(loaded) is type(head)
    Xt, _ = clusters(5, seed=4)
    np.testing.assert_array_equal(loaded.predict(Xt), head.predict(Xt))
    np.testing.assert_array_equal(loaded.predict(Xt, reject=True), head.predict(Xt, reject=True))
    np.testing.assert_allclose(loaded.predict_proba(Xt), head.predict_proba(Xt))
    assert loaded.reject_threshold_ == head.reject_threshold_
    loaded.partial_fit(Xt[:2], labels[:2])  # state survives for further enrolment


def test_not_fitted(make_head: Any) -> None:
    head = make_head()
    for call in (head.predict, head.predict_proba, head.decision_function):
        with pytest.raises(NotFittedError, match="not fitted"):
            call(np.zeros((1, D)))
    with pytest.raises(NotFittedError):
        head.to_npz_dict()


def test_feature_count_message(make_head: Any) -> None:
    X, y = clusters(2)
    head = make_head().fit(X, y)
    name = type(head).__name__
    with pytest.raises(InputError, match=f"X has 3 features, but {name} is expecting {D} features as input."):
        head.predict(np.zeros((2, 3)))


@pytest.mark.parametrize(
    ("X", "y", "match"),
    [
        (np.full((2, D), np.nan), [0, 1], "NaN"),
        (np.zeros((0, D)), [], "empty"),
        (np.zeros((3, D)), [0, 1], "3 samples"),
        (np.zeros(D), [0], "2-D"),
        (np.zeros((2, D)), [0, "a"], "all strings or all integers"),
        (np.zeros((2, D)), [0.5, 1.5], "all strings or all integers"),
        (np.zeros((2, D)), ["a", UNKNOWN], "reserved"),
    ],
)
def test_bad_inputs_raise(make_head: Any, X: Any, y: Any, match: str) -> None:
    with pytest.raises(InputError, match=match):
        make_head().fit(X, y)


def test_bad_predict_input_and_label_type() -> None:
    X, y = clusters(2)
    head = RidgeHead().fit(X, y)
    with pytest.raises(InputError, match="NaN"):
        head.predict(np.full((1, D), np.inf))
    with pytest.raises(InputError, match="label type"):
        head.partial_fit(X[:1], ["a"])
    with pytest.raises(ConfigError):
        RidgeHead(alpha=-1.0).fit(X, y)
    with pytest.raises(InputError, match="unknown kind"):
        head_from_npz_dict({"kind": np.array("svm")})
    with pytest.raises(InputError, match="Unknown head"):
        create_head("svm")


@pytest.mark.parametrize("n", [14, 40, 300])  # 40: block (Schur complement) inverses; 300: eigendecomposition
def test_ridge_loo_closed_form_equals_brute_force(n: int) -> None:
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(n, 30))
    Y = np.eye(3)[rng.integers(0, 3, n)]
    groups = np.repeat(np.arange(n // 2), 2)  # pairs held out together, like an image and its flip
    for g in (None, groups):
        fast = ridge_loo_decisions(Z, Y, [0.1, 2.0], g)
        keys = np.arange(n) if g is None else g
        for a, alpha in enumerate((0.1, 2.0)):
            for k in np.unique(keys):
                out = keys == k
                Zi, Yi = Z[~out], Y[~out]
                W = np.linalg.solve(
                    (Zi - Zi.mean(0)).T @ (Zi - Zi.mean(0)) + alpha * np.eye(30), (Zi - Zi.mean(0)).T @ Yi
                )
                brute = (Z[out] - Zi.mean(0)) @ W + Yi.mean(0)
                np.testing.assert_allclose(fast[a, out], brute, atol=1e-9)


def test_shifted_inverses_match_numpy() -> None:
    rng = np.random.default_rng(1)
    for n in (5, 16, 51):
        A = rng.normal(size=(n, n + 3))
        K = A @ A.T
        out = shifted_inverses(K, [0.01, 1.0, 30.0])
        for i, alpha in enumerate((0.01, 1.0, 30.0)):
            np.testing.assert_allclose(out[i], np.linalg.inv(K + alpha * np.eye(n)), rtol=1e-9, atol=1e-9)


def test_bordered_inverse_tracks_the_growing_matrix() -> None:
    rng = np.random.default_rng(2)
    Z = rng.normal(size=(60, 20))
    M = Z @ Z.T + 0.5 * np.eye(60)
    inv = BorderedInverse(np.linalg.inv(M[:5, :5]), max_rank=4)
    for n, m in [(5, 1), (6, 2), (8, 1), (9, 3), (12, 7), (19, 1), (20, 40)]:  # folds and a batch > max_rank
        b, c = M[:n, n : n + m], M[n : n + m, n : n + m]
        u = inv.matmul(b)
        inv.border(u, np.linalg.inv(c - b.T @ u))
        np.testing.assert_allclose(inv.dense(), np.linalg.inv(M[: n + m, : n + m]), atol=1e-10)
        B = rng.normal(size=(n + m, 3))
        np.testing.assert_allclose(inv.matmul(B), np.linalg.solve(M[: n + m, : n + m], B), atol=1e-10)


def test_ridge_one_sample_enrolments_equal_a_refit() -> None:
    X, y = clusters(20)  # 80 one-sample enrolments: several folds of the low-rank inverse terms
    Xt, _ = clusters(5, seed=3)
    inc = RidgeHead(alpha=0.3).fit(X[:3], y[:3])
    for i in range(3, len(y)):
        inc.partial_fit(X[i : i + 1], y[i : i + 1])
    full = RidgeHead(alpha=0.3).fit(X, y)
    np.testing.assert_allclose(inc.decision_function(Xt), full.decision_function(Xt), atol=1e-9)
    np.testing.assert_allclose(inc.Minv_, full.Minv_, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ridge_large_batch_enrolments_stay_exact(dtype: Any) -> None:
    """Batches larger than the low-rank buffer take the dense bordering path, ten times in a row."""
    rng = np.random.default_rng(5)
    X = np.abs(rng.normal(size=(420, 1280))).astype(dtype)
    y = rng.integers(0, 12, len(X))
    head = RidgeHead(alpha=0.1).fit(X[:20], y[:20])
    for start in range(20, len(X), 40):
        head.partial_fit(X[start : start + 40], y[start : start + 40])
    full = RidgeHead(alpha=0.1).fit(X, y)
    tol = 1e-4 if dtype == np.float32 else 1e-8
    np.testing.assert_allclose(head.decision_function(X[:50]), full.decision_function(X[:50]), atol=tol)


def test_float32_features_stay_float32_and_agree_with_float64() -> None:
    X, y = clusters(12)
    Xt, _ = clusters(5, seed=3)
    X32 = X.astype(np.float32)
    assert power_l2(X32, 0.5).dtype == np.float32
    for factory in FACTORIES.values():
        h32, h64 = factory().fit(X32, y), factory().fit(X, y)
        np.testing.assert_allclose(h32.decision_function(Xt), h64.decision_function(Xt), atol=1e-5)
    labels = np.array(["a", "b", "c", "d"])[y]
    inc = RidgeHead(alpha=0.3).fit(X32[:20], labels[:20]).partial_fit(X32[20:], labels[20:])
    assert inc.Z_.dtype == np.float32  # the state keeps the features' precision (half the memory)
    full = RidgeHead(alpha=0.3).fit(X32, labels)
    np.testing.assert_allclose(inc.decision_function(Xt), full.decision_function(Xt), atol=1e-5)


def test_ridge_temperature_is_chosen_on_first_use() -> None:
    X, y = clusters(5)
    head = RidgeHead().fit(X, y)
    assert head._temperature is None  # predict never needs it, so fit does not pay for it
    rows = np.ones(len(y), bool)
    assert head.temperature_ == loo_temperature(head.loo_decision_[rows], y)
    assert RidgeHead(temperature=0.7).fit(X, y).temperature_ == 0.7
    one_shot = RidgeHead().fit(*clusters(1))
    assert one_shot.temperature_ == FALLBACK_TEMPERATURE  # nothing to score with one sample per class
    buf = io.BytesIO()
    np.savez(buf, **head.to_npz_dict())
    buf.seek(0)
    restored = RidgeHead.from_npz_dict(dict(np.load(buf, allow_pickle=False)))
    assert restored.temperature_ == head.temperature_


def test_ncm_loo_closed_form_equals_brute_force() -> None:
    X, y = clusters(3, spread=4.0)
    Z = power_l2(X, 0.5)
    fast = ncm_loo_predictions(Z, y, 4, np.arange(len(y)))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        brute = NearestClassMean().fit(X[keep], y[keep]).predict(X[i : i + 1])[0]
        assert fast[i] == brute


def test_auto_picks_sensibly() -> None:
    X, y = clusters(5, spread=2.0)
    head = AutoHead().fit(X, y)
    assert head.kind_ in ("ridge", "ncm")
    assert set(head.loo_accuracy_) == {"ridge", "ncm"}
    assert head.loo_accuracy_[head.kind_] == max(head.loo_accuracy_.values())
    one_shot = AutoHead().fit(*clusters(1))
    assert one_shot.kind_ == one_shot.prefer and one_shot.loo_accuracy_ == {}


def test_rejection_flags_far_points() -> None:
    X, y = clusters(8)
    Xt, _ = clusters(20, seed=5)
    far = np.abs(np.random.default_rng(9).normal(size=(10, D))) * 3.0  # unlike any class centre
    for head in (NearestClassMean().fit(X, y), RidgeHead().fit(X, y), AutoHead().fit(X, y)):
        out = head.predict(far, reject=True)
        assert (out == UNKNOWN).mean() >= 0.9
        assert (head.predict(Xt, reject=True) != UNKNOWN).mean() >= 0.8
        assert out.dtype == object  # integer classes mixed with the "unknown" sentinel
    strings = NearestClassMean().fit(X, np.array(["a", "b", "c", "d"])[y]).predict(far, reject=True)
    assert strings.dtype.kind == "U" and (strings == UNKNOWN).all()


def test_rejection_one_shot_fallback() -> None:
    X, y = clusters(1)
    head = NearestClassMean().fit(X, y)
    assert np.isfinite(head.reject_threshold_)
    assert NearestClassMean().fit(X[:1], y[:1]).reject_threshold_ == -np.inf


def test_ridge_state_survives_npz_and_grows_exactly() -> None:
    X, y = clusters(6)
    head = RidgeHead(alpha=0.3, temperature=0.1).fit(X[:10], y[:10])
    buf = io.BytesIO()
    np.savez(buf, **head.to_npz_dict())
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as data:
        loaded = RidgeHead.from_npz_dict(data)
    for i in range(10, len(X)):  # one sample at a time, through several buffer doublings
        loaded.partial_fit(X[i : i + 1], y[i : i + 1])
    full = RidgeHead(alpha=0.3, temperature=0.1).fit(X, y)
    np.testing.assert_allclose(loaded.coef_, full.coef_, atol=1e-9)
    np.testing.assert_allclose(loaded.intercept_, full.intercept_, atol=1e-9)
    assert not hasattr(full, "loo_decision_")  # alpha and temperature given: LOO skipped


def test_auto_with_flip_groups() -> None:
    X, y = clusters(3)
    mirrored = X + np.random.default_rng(7).normal(scale=0.05, size=X.shape)  # near-duplicate "flips"
    groups = np.concatenate([np.arange(len(X)), np.arange(len(X))])
    head = AutoHead().fit(np.concatenate([X, mirrored]), np.concatenate([y, y]), groups)
    assert head.kind_ in ("ridge", "ncm")
    # held out together, twins cannot vouch for each other: LOO accuracy stays below a perfect score
    assert all(0.0 <= v <= 1.0 for v in head.loo_accuracy_.values())


@pytest.mark.parametrize("grouped", [False, True])
def test_loo_cosines_kernel_matches_feature_space(grouped: bool) -> None:
    from edgetl_runtime.heads.rejection import class_sums, loo_cosines

    X, y = clusters(4)
    Z = power_l2(X, 0.5)
    groups = np.arange(len(y)) // 2 if grouped else np.arange(len(y))
    sums, counts = class_sums(Z, y, 4)
    direct, valid = loo_cosines(Z, y, sums, counts, groups)
    via_kernel, valid_k = loo_cosines(Z, y, sums, counts, groups, kernel=Z @ Z.T)
    np.testing.assert_allclose(via_kernel, direct, atol=1e-10)
    np.testing.assert_array_equal(valid_k, valid)


@pytest.mark.parametrize("kind", ["ncm", "ridge", "auto"])
def test_rejection_threshold_lazy_and_invalidated_by_partial_fit(kind: str) -> None:
    X, y = clusters(5)
    Xn, yn = clusters(2, seed=3)
    eager = create_head(kind).fit(X, y)
    first = eager.reject_threshold_  # calibrated before partial_fit
    assert eager.reject_threshold_ == first  # cached
    eager.partial_fit(Xn, yn)
    lazy = create_head(kind).fit(X, y)  # never read before partial_fit
    if kind != "auto":  # AutoHead reads NCM's LOO cosines to choose, which calibrates on the way
        assert lazy.rejector_._calib is None  # calibration deferred until needed
    lazy.partial_fit(Xn, yn)
    assert lazy.reject_threshold_ == eager.reject_threshold_
    np.testing.assert_array_equal(lazy.rejector_.scores_, eager.rejector_.scores_)


def test_auto_default_margin() -> None:
    assert AutoHead().margin == 0.06
