"""AdaptiveHead (issue 22): adaptation to seen images on synthetic clusters, the guard, rejection, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgetl_runtime.errors import ConfigError, InputError
from edgetl_runtime.heads import AdaptConfig, AdaptiveHead, AutoHead, create_head, head_from_npz_dict
from edgetl_runtime.heads.seen_pool import SeenPool
from edgetl_runtime.learner import Learner
from edgetl_runtime.state.store import FeatureStore

pytestmark = pytest.mark.runtime

D, C = 64, 4


def _clusters(seed: int = 0, spread: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative class centres (post-ReLU-like) far enough apart that the stream's clusters are the classes."""
    rng = np.random.default_rng(seed)
    centres = rng.random((C + 2, D)) * (rng.random((C + 2, D)) < 0.5)  # 2 extra: classes nobody enrols
    return centres, spread * np.ones(1)


def _draw(centres: np.ndarray, classes: np.ndarray, n: int, seed: int, spread: float = 0.35) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.abs(centres[classes][:, None, :] + spread * rng.standard_normal((len(classes), n, D))).reshape(-1, D)


def _labelled(centres: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    X = _draw(centres, np.arange(C), k, seed)
    return X, np.repeat(np.arange(C), k)


def test_seen_images_raise_one_shot_accuracy_on_separable_clusters() -> None:
    centres, _ = _clusters()
    test = _draw(centres, np.arange(C), 200, seed=99)
    truth = np.repeat(np.arange(C), 200)
    gains = []
    for seed in range(5):
        X, y = _labelled(centres, 1, seed)
        stream = _draw(centres, np.arange(C), 100, seed=50 + seed)
        base = np.mean(AutoHead().fit(X, y).predict(test) == truth)
        head = AdaptiveHead().fit(X, y, unlabelled=stream)
        gains.append(np.mean(head.predict(test) == truth) - base)
        assert head.adaptation_["seen"] == len(stream) and head.adaptation_["rounds"] >= 1
    assert np.mean(gains) > 0.03 and min(gains) > -0.01


def test_without_seen_images_it_is_the_labelled_only_auto_head() -> None:
    centres, _ = _clusters()
    X, y = _labelled(centres, 3, 0)
    test = _draw(centres, np.arange(C), 30, seed=7)
    head = AdaptiveHead().fit(X, y)
    np.testing.assert_array_equal(head.predict(test), AutoHead().fit(X, y).predict(test))
    assert head.adaptation_["adapted"] is False and "skipped" in head.adaptation_


def test_a_tiny_stream_is_not_used() -> None:
    centres, _ = _clusters()
    X, y = _labelled(centres, 2, 0)
    head = AdaptiveHead().fit(X, y, unlabelled=_draw(centres, np.arange(C), 1, seed=3)[:5])
    assert head.adaptation_["adapted"] is False and head.adaptation_["seen"] == 4


def test_a_stream_of_one_repeated_image_counts_once_and_is_not_used() -> None:
    centres, _ = _clusters()
    X, y = _labelled(centres, 2, 0)
    stream = np.repeat(_draw(centres, np.arange(1), 1, seed=3), 500, axis=0)
    head = AdaptiveHead().fit(X, y, unlabelled=stream)
    assert head.adaptation_["repeats_dropped"] == 499 and head.adaptation_["adapted"] is False
    assert np.isfinite(head.predict_proba(X)).all()


def test_non_finite_seen_rows_are_dropped_and_scores_stay_finite() -> None:
    centres, _ = _clusters()
    X, y = _labelled(centres, 2, 0)
    stream = _draw(centres, np.arange(C), 50, seed=4)
    stream[3, 5], stream[10, 0] = np.nan, np.inf
    head = AdaptiveHead().fit(X, y, unlabelled=stream)
    assert head.adaptation_["non_finite_dropped"] == 2 and head.adaptation_["seen"] == len(stream) - 2
    assert np.isfinite(head.predict_proba(stream[20:30])).all() and np.isfinite(head.similarity(stream[20:30])).all()


def test_non_finite_enrolled_features_are_a_typed_error() -> None:
    X = np.ones((4, D))
    X[1, 2] = np.nan
    with pytest.raises(InputError, match="NaN or infinite"):
        AdaptiveHead().fit(X, [0, 0, 1, 1])


def test_seen_features_of_another_width_are_a_typed_error() -> None:
    centres, _ = _clusters()
    X, y = _labelled(centres, 2, 0)
    with pytest.raises(InputError, match="expecting"):
        AdaptiveHead().fit(X, y, unlabelled=np.ones((30, D + 1)))


def test_one_class_predicts_it_with_finite_scores_and_rejects_what_is_unlike_it() -> None:
    centres, _ = _clusters()
    X = _draw(centres, np.arange(1), 5, seed=0)
    head = AdaptiveHead().fit(X, ["cat"] * 5, unlabelled=_draw(centres, np.arange(C + 2), 20, seed=1))
    assert head.adaptation_["adapted"] is False
    assert list(head.predict(X[:2])) == ["cat", "cat"]
    assert np.isfinite(head.similarity(X)).all() and np.isfinite(head.reject_threshold_)


def test_identical_constant_images_give_finite_scores() -> None:
    X = np.ones((4, D))
    head = AdaptiveHead().fit(X, ["a", "a", "b", "b"], unlabelled=np.ones((40, D)))
    assert np.isfinite(head.predict_proba(X)).all() and np.isfinite(head.similarity(X)).all()
    assert head.adaptation_["repeats_dropped"] == 39


def test_rejection_separates_a_class_nobody_enrolled() -> None:
    centres, _ = _clusters(seed=1)
    X, y = _labelled(centres, 5, 0)
    stream = _draw(centres, np.arange(C + 2), 60, seed=2)
    head = AdaptiveHead().fit(X, y, unlabelled=stream)
    known = _draw(centres, np.arange(C), 50, seed=3)
    unknown = _draw(centres, np.arange(C, C + 2), 100, seed=4)
    s_known, s_unknown = head.similarity(known), head.similarity(unknown)
    auroc = np.mean(s_known[:, None] > s_unknown[None, :])
    assert auroc > 0.9
    kept = np.mean(head.predict(known, reject=True).astype(str) != "unknown")
    rejected = np.mean(head.predict(unknown, reject=True).astype(str) == "unknown")
    assert kept >= 0.8 and rejected >= 0.6


def test_saved_and_loaded_it_predicts_the_same_and_says_what_it_used() -> None:
    centres, _ = _clusters()
    X, y = _labelled(centres, 1, 0)
    head = AdaptiveHead().fit(X, y, unlabelled=_draw(centres, np.arange(C), 50, seed=1))
    test = _draw(centres, np.arange(C), 20, seed=2)
    again = head_from_npz_dict(head.to_npz_dict())
    assert isinstance(again, AdaptiveHead) and again.adaptation_ == head.adaptation_
    np.testing.assert_array_equal(again.predict(test, reject=True), head.predict(test, reject=True))
    np.testing.assert_allclose(again.predict_proba(test), head.predict_proba(test))


def test_old_saved_heads_still_load_and_predict_as_before() -> None:
    centres, _ = _clusters()
    X, y = _labelled(centres, 3, 0)
    test = _draw(centres, np.arange(C), 10, seed=2)
    for name in ("auto", "ncm", "ridge"):
        head = create_head(name).fit(X, y)
        again = head_from_npz_dict(head.to_npz_dict())
        np.testing.assert_array_equal(again.predict(test, reject=True), head.predict(test, reject=True))


def test_add_and_remove_update_the_head_in_use() -> None:
    centres, _ = _clusters()
    X, y = _labelled(centres, 2, 0)
    head = AdaptiveHead().fit(X, y, unlabelled=_draw(centres, np.arange(C), 50, seed=1))
    extra = _draw(centres, np.array([C]), 3, seed=5)
    head.partial_fit(extra, [C] * 3)
    assert list(head.classes_) == [*range(C + 1)] and head.predict(extra[:1])[0] == C
    head.remove_classes([C])
    assert list(head.classes_) == [*range(C)]


def test_adapt_config_refuses_bad_values() -> None:
    with pytest.raises(ConfigError, match="rounds"):
        AdaptConfig(rounds=0)
    with pytest.raises(ConfigError, match="temperature"):
        AdaptiveHead(config={"temperature": -1.0})


def test_feature_store_seen_features_are_the_unenrolled_ones_newest_first() -> None:
    store = FeatureStore(None, model_digest="d", feature_dim=4, preprocess_key="p")
    store.put_features({f"k{i}": np.full(4, float(i), np.float32) for i in range(5)})
    store.add_samples(["k1"], ["a"], np.full((1, 4), 1.0, np.float32))
    seen = store.seen_features()
    assert seen.shape == (4, 4) and list(seen[:, 0]) == [4.0, 3.0, 2.0, 0.0]
    assert store.seen_features(limit=2).shape == (2, 4)


def test_learner_with_the_adaptive_head_uses_what_it_predicted(tiny_bundle: Path) -> None:
    rng = np.random.default_rng(0)

    def images(color: tuple[int, int, int], n: int) -> list[np.ndarray]:
        base = np.array(color, dtype=np.int16)
        return [np.clip(base + rng.integers(-20, 21, size=(18, 22, 3)), 0, 255).astype(np.uint8) for _ in range(n)]

    learner = Learner.load(tiny_bundle, backend="onnxruntime", head="adaptive")
    learner.add(images((220, 30, 30), 1), "red")
    learner.add(images((30, 220, 30), 1), "green")
    learner.predict(images((220, 30, 30), 15) + images((30, 220, 30), 15))  # cached: the seen pool
    learner.fit()
    info = learner.info()["adaptation"]
    assert info is not None and info["seen"] == 30
    assert list(learner.predict(images((220, 30, 30), 2))) == ["red", "red"]


def test_seen_pool_rows_are_the_heads_transform_and_its_sum_is_kept() -> None:
    from edgetl_runtime.heads.base import power_l2

    for X in (np.random.default_rng(0).random((6, D)), np.random.default_rng(1).standard_normal((6, D))):
        pool = SeenPool(D)
        assert pool.add(X[:4]) == 4 and pool.add(X[4:]) == 2
        np.testing.assert_allclose(pool.rows, power_l2(X, 0.5), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(pool.sum, power_l2(X, 0.5).sum(axis=0), rtol=1e-5, atol=1e-6)


def test_seen_pool_counts_repeats_and_non_finite_rows_once_and_leaves_them_out() -> None:
    X = np.random.default_rng(0).random((5, D)).astype(np.float32)
    pool = SeenPool(D)
    bad = X.copy()
    bad[1, 3] = np.nan
    assert pool.add(np.vstack([X[:3], X[0:1], bad[1:2]]), ["a", "b", "c", "a2", "bad"]) == 3  # a repeat, a NaN
    assert pool.add(X[2:5], ["c2", "d", "e"]) == 2  # X[2] repeats a row already held
    assert len(pool) == 5 and pool.repeats == 2 and pool.non_finite == 1
    reads: list[list[str]] = []
    current = ["a", "b", "c", "a2", "bad", "c2", "d", "e"]
    pool.sync(current, lambda keys: reads.append(keys) or {})
    assert reads == [] and pool.repeats == 2 and pool.non_finite == 1  # refused rows are not read or counted again
    pool.sync(["a", "b", "d"], lambda keys: {})
    assert pool.keys == ["a", "b", "d"] and pool.repeats == 0 and pool.non_finite == 0


def test_seen_pool_drops_the_oldest_by_moving_its_start_and_keeps_an_exact_sum() -> None:
    X = np.random.default_rng(0).random((12, D)).astype(np.float32)
    pool = SeenPool(D)
    pool.add(X[:8], [f"k{i}" for i in range(8)])
    buffer = pool._buf
    assert pool.keep_only({f"k{i}" for i in range(3, 8)}) == 3  # the oldest three leave: no copy
    assert pool._buf is buffer and pool.keys == [f"k{i}" for i in range(3, 8)]
    pool.keep_only({"k3", "k5", "k6", "k7"})  # one from the middle: compacted
    pool.add(X[8:], [f"k{i}" for i in range(8, 12)])
    np.testing.assert_allclose(pool.sum, pool.rows.sum(axis=0), rtol=1e-5)
    assert pool.keys == ["k3", "k5", "k6", "k7", "k8", "k9", "k10", "k11"]


def test_seen_pool_slides_its_window_in_place_when_it_reaches_the_end_of_its_buffer() -> None:
    from edgetl_runtime.heads.base import power_l2

    X = np.random.default_rng(0).random((170, D)).astype(np.float32)
    pool = SeenPool(D)
    pool.add(X[:100], [f"k{i}" for i in range(100)])
    buffer, capacity = pool._buf, len(pool._buf)
    pool.keep_only({f"k{i}" for i in range(80, 100)})
    pool.add(X[100:], [f"k{i}" for i in range(100, 170)])  # past the end: the 20 kept rows slide to the front
    assert pool._buf is buffer and len(pool._buf) == capacity and len(pool) == 90
    np.testing.assert_allclose(pool.rows, power_l2(X[80:], 0.5), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(pool.sum, pool.rows.sum(axis=0), rtol=1e-5)


def test_seen_pool_follows_the_state_through_enrolment_removal_and_eviction() -> None:
    store = FeatureStore(None, model_digest="d", feature_dim=D, preprocess_key="p", max_unenrolled=6)
    rng = np.random.default_rng(0)
    vec = {f"k{i}": rng.random(D).astype(np.float32) for i in range(9)}
    reads: list[list[str]] = []

    def read(keys: list[str]) -> dict[str, np.ndarray]:
        reads.append(list(keys))
        return store.cache.get(keys)

    def sync() -> set[str]:
        pool.sync(store.cache.seen_keys(100), read)
        return set(pool.keys)

    pool = SeenPool(D)
    store.put_features({k: vec[k] for k in ("k0", "k1", "k2", "k3", "k4")})
    assert sync() == {"k0", "k1", "k2", "k3", "k4"}
    store.add_samples(["k2"], ["a"], vec["k2"][None])  # enrolled: no longer a seen image
    store.put_features({"k5": vec["k5"]})
    assert sync() == {"k0", "k1", "k3", "k4", "k5"} and reads[-1] == ["k5"]  # only the new one is read
    store.remove(label="a")  # its image is a seen one again, whatever row number SQLite gave it
    assert sync() == {"k0", "k1", "k2", "k3", "k4", "k5"} and reads[-1] == ["k2"]
    store.put_features({k: vec[k] for k in ("k6", "k7", "k8")})  # beyond max_unenrolled=6: the oldest go
    seen = set(store.cache.seen_keys(100))
    assert len(seen) == 6 and sync() == seen
    np.testing.assert_allclose(pool.sum, pool.rows.sum(axis=0), rtol=1e-5)
    assert sync() == seen and reads[-1] == ["k6", "k7", "k8"]  # nothing new: nothing read
    other = FeatureStore(None, model_digest="d2", feature_dim=D, preprocess_key="p")
    assert other.cache.seen_keys(100) == []  # another model's cache is its own


def test_adaptive_head_fits_the_same_from_an_array_and_from_a_pool() -> None:
    centres, _ = _clusters()
    X, y = _labelled(centres, 1, seed=1)
    seen = _draw(centres, np.arange(C), 30, seed=2)
    pool = SeenPool(D)
    pool.add(seen[::-1])  # an array is newest first; the pool oldest first
    a = AdaptiveHead().fit(X, y, unlabelled=seen)
    b = AdaptiveHead().fit(X, y, unlabelled=pool)
    test = _draw(centres, np.arange(C), 20, seed=3)
    np.testing.assert_allclose(a.decision_function(test), b.decision_function(test), rtol=1e-5, atol=1e-6)
    assert a.adaptation_ == b.adaptation_


def _colour_images(rng: np.random.Generator, color: tuple[int, int, int], n: int) -> list[np.ndarray]:
    base = np.array(color, dtype=np.int16)
    return [np.clip(base + rng.integers(-20, 21, size=(18, 22, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


def test_learner_adaptive_head_re_adapts_after_enough_new_images_never_during_a_prediction(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgetl_runtime import head_keeper

    rng = np.random.default_rng(0)
    red, green = (220, 30, 30), (30, 220, 30)
    learner = Learner.load(tiny_bundle, backend="onnxruntime", head="adaptive")
    learner.add(_colour_images(rng, red, 1), "red")
    learner.add(_colour_images(rng, green, 1), "green")
    learner.fit()
    learner.predict(_colour_images(rng, red, 2))
    assert learner.info()["adaptation"]["seen"] == 0  # 2 new: fewer than READAPT_MIN
    before = learner.head
    learner.predict(_colour_images(rng, red, 12) + _colour_images(rng, green, 12))  # 26 new: re-adapts after it
    assert learner.info()["adaptation"]["seen"] == 26 and learner.head is not before
    monkeypatch.setattr(head_keeper, "READAPT_MIN", 1)
    learner.predict(_colour_images(rng, green, 2))  # 2 < 10 % of 26: no re-adaptation
    assert learner.info()["adaptation"]["seen"] == 26
    learner.predict(_colour_images(rng, green, 1))  # 3 >= 2.6: re-adapts
    assert learner.info()["adaptation"]["seen"] == 29
    learner.evaluate(_colour_images(rng, red, 25), ["red"] * 25)  # a test set is not seen: nothing changes
    assert learner.info()["adaptation"]["seen"] == 29 and len(learner.store.seen_features()) == 29


def test_a_shipped_head_is_continued_and_seen_images_never_refit_it(tiny_bundle: Path) -> None:
    from edgetl_runtime.heads import Prior
    from edgetl_runtime.heads.stats import ClassStats

    learner = Learner.load(tiny_bundle, backend="onnxruntime", head="adaptive")
    rng = np.random.default_rng(0)
    X = learner.features(_colour_images(rng, (220, 30, 30), 4) + _colour_images(rng, (30, 220, 30), 4))
    prior = Prior(ClassStats.from_features(X, np.array(["red"] * 4 + ["green"] * 4)), alpha=0.05, temperature=0.1)
    shipped = Learner(learner.bundle, learner.backend, learner.store, "adaptive", prior=prior)
    head = shipped.head
    assert head.kind == "lda"
    shipped.predict(_colour_images(rng, (220, 30, 30), 40))
    assert shipped.head is head  # 40 new seen images: no re-adaptation of a shipped head


def test_adaptation_is_the_default_of_the_learner_and_of_edgetl_device(tiny_bundle: Path) -> None:
    import inspect

    from edgetl_runtime.cli import build_parser

    assert inspect.signature(Learner.load).parameters["head"].default == "adaptive"
    args = build_parser().parse_args(["--bundle", str(tiny_bundle), "info"])
    assert args.head == "adaptive"
    learner = Learner.load(tiny_bundle, backend="onnxruntime")
    learner.add([np.full((18, 22, 3), 200, np.uint8)], "a")
    learner.add([np.full((18, 22, 3), 20, np.uint8)], "b")
    learner.fit()
    assert learner.info()["head"] == "adaptive" and learner.info()["adaptation"]["adapted"] is False  # none seen
