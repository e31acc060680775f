"""One enrolment state serves every precision of a bundle and every re-export of it (issue 16, item 7).

The tiny bundles here have an int8 member that is a *different* model (weights x1.01: another digest,
features within the golden tolerance), so a precision switch really needs other features.
"""

from __future__ import annotations

import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest
from tiny_bundles import TINY_SPEC, tiny_onnx, write_tiny_bundle

from edgetl_runtime import Learner
from edgetl_runtime.backends.onnxruntime import OrtBackend
from edgetl_runtime.bundle.manifest import Precision
from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.errors import NotFittedError
from edgetl_runtime.preprocess import PreprocessSpec, preprocess_batch

pytestmark = pytest.mark.runtime

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 50, 210)}


def _images(colour: tuple[int, int, int], n: int, seed: int, size: tuple[int, int] = (20, 24)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = np.array(colour, dtype=np.int16)
    return [np.clip(base + rng.integers(-25, 26, (*size, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


def _enrol(learner: Learner, size: tuple[int, int] = (20, 24)) -> dict[str, list[np.ndarray]]:
    enrolled = {label: _images(colour, 3, seed, size) for seed, (label, colour) in enumerate(COLOURS.items())}
    for label, images in enrolled.items():
        learner.add(images, label)
    return enrolled


def _direct_features(bundle: Path, precision: Precision, images: list[np.ndarray]) -> np.ndarray:
    """What the bundle's model at ``precision`` makes of ``images``, with no state involved."""
    opened = Bundle.open(bundle)
    return OrtBackend.from_bundle(opened, precision).run(preprocess_batch(images, opened.manifest.preprocess))


@pytest.fixture
def two_model_bundle(tmp_path: Path) -> Path:
    return write_tiny_bundle(tmp_path / "two.edgetl", int8_model=tiny_onnx(scale=1.01))


def test_a_state_enrolled_at_int8_serves_fp32_and_back_with_one_backbone_run_per_sample(
    two_model_bundle: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state.sqlite"
    with Learner.load(two_model_bundle, state, backend="onnxruntime", precision="int8") as learner:
        enrolled = _enrol(learner)
        queries = _images(COLOURS["green"], 4, seed=9)
        int8_predictions = learner.predict(queries)
    images = [img for imgs in enrolled.values() for img in imgs]
    with Learner.load(two_model_bundle, state, backend="onnxruntime", precision="fp32") as learner:
        assert learner.backbone_runs == len(images)  # re-extracted once, at load
        assert learner.counts() == {label: 3 for label in COLOURS}
        _, labels, _, features = learner.store.samples_with_keys()
        np.testing.assert_allclose(features, _direct_features(two_model_bundle, Precision.FP32, images), rtol=1e-5)
        assert list(labels) == [label for label in COLOURS for _ in range(3)]
        assert list(learner.predict(queries)) == list(int8_predictions) == ["green"] * 4
        assert learner.unavailable == {}
    for precision in ("fp32", "int8"):  # both models' features are stored now: no backbone run at load
        with Learner.load(two_model_bundle, state, backend="onnxruntime", precision=precision) as learner:
            assert learner.backbone_runs == 0
            _, _, _, features = learner.store.samples_with_keys()
            expected = _direct_features(two_model_bundle, Precision(precision), images)
            np.testing.assert_allclose(features, expected, rtol=1e-5)


def test_a_re_exported_bundle_keeps_every_enrolment(bundle_factory, tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite"
    with Learner.load(bundle_factory(seed=0), state, backend="onnxruntime") as learner:
        enrolled = _enrol(learner)
        ids_before = learner.store.samples()[0].tolist()
    new_bundle = bundle_factory(seed=1)  # another export: every weight differs
    images = [img for imgs in enrolled.values() for img in imgs]
    with Learner.load(new_bundle, state, backend="onnxruntime") as learner:
        ids, _, _, features = learner.store.samples_with_keys()
        assert ids.tolist() == ids_before
        # Images smaller than the thumbnail are kept as they are: the new model sees exactly what the old one did.
        np.testing.assert_allclose(features, _direct_features(new_bundle, Precision.FP32, images), rtol=1e-5)
        assert list(learner.predict(_images(COLOURS["blue"], 2, seed=7))) == ["blue", "blue"]
        models = learner.storage()["models"]
        assert [(m["current"], m["samples_with_features"]) for m in models] == [(False, 9), (True, 9)]


@pytest.mark.usefixtures("each_cpu")
def test_features_only_state_warns_names_the_samples_and_still_serves_its_own_model(
    two_model_bundle: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state.sqlite"
    with Learner.load(two_model_bundle, state, backend="onnxruntime", precision="int8", keep_images="none") as learner:
        _enrol(learner)
        assert learner.storage()["images_kept"] == 0
    with pytest.warns(UserWarning, match=r"9 enrolled sample\(s\).*features only.*Fix: load the precision"):
        learner = Learner.load(two_model_bundle, state, backend="onnxruntime", precision="fp32")
    with learner:
        assert learner.unavailable == {label: 3 for label in COLOURS}
        assert learner.info()["unavailable_to_this_model"] == learner.unavailable
        with pytest.raises(NotFittedError, match="kept as features only"):
            learner.predict(_images(COLOURS["red"], 1, seed=3))
    with warnings.catch_warnings():
        # back on the model that made them: every sample, no features-only warning
        warnings.filterwarnings("error", message=".*features only")
        with Learner.load(two_model_bundle, state, backend="onnxruntime", precision="int8") as learner:
            assert learner.unavailable == {} and len(learner.store.samples()[0]) == 9


def test_the_image_policy_is_the_states_own_until_changed(tiny_bundle: Path, tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite"
    with Learner.load(tiny_bundle, state, backend="onnxruntime", keep_images=16) as learner:
        learner.add(_images(COLOURS["red"], 2, seed=0, size=(40, 48)), "red")
    with Learner.load(tiny_bundle, state, backend="onnxruntime") as learner:  # no policy given: the state's
        assert learner.store.image_policy.to_text() == "thumbnail:16"
        kept = learner.store.images.kept_pixels(learner.store.samples_with_keys()[2])
        assert sorted(p.shape for p in kept.values()) == [(16, 19, 3)] * 2  # shorter side 16, aspect kept
        learner.add(_images(COLOURS["green"], 1, seed=1, size=(40, 48)), "green")
    with Learner.load(tiny_bundle, state, backend="onnxruntime", keep_images="original") as learner:
        learner.add(_images(COLOURS["blue"], 1, seed=2, size=(40, 48)), "blue")
        kept = learner.store.images.kept_pixels(learner.store.samples_with_keys()[2])
        assert sorted(p.shape for p in kept.values()) == [(16, 19, 3)] * 3 + [(40, 48, 3)]
    with sqlite3.connect(state) as con:
        assert con.execute("SELECT value FROM meta WHERE key = 'image_policy'").fetchone() == ("original",)


def test_thumbnails_smaller_than_the_new_models_resize_are_reported(bundle_factory, tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite"
    with Learner.load(bundle_factory(), state, backend="onnxruntime", keep_images=16) as learner:
        learner.add(_images(COLOURS["red"], 2, seed=0, size=(40, 48)), "red")
    bigger = PreprocessSpec(input_size=(32, 32), crop_pct=1.0, mean=TINY_SPEC.mean, std=TINY_SPEC.std)
    bundle = write_tiny_bundle(tmp_path / "bigger.edgetl", seed=2, spec=bigger)
    with pytest.warns(UserWarning, match=r"2 kept thumbnail\(s\).*16 px.*resizes to 32 px"):
        Learner.load(bundle, state, backend="onnxruntime").close()


def _noise(n: int, seed: int) -> list[np.ndarray]:
    """Images zlib cannot shrink: their encoded pixels are a long, unmistakable byte string in the file."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(n)]


def _on_disk(state: Path, images: list[np.ndarray]) -> dict[str, int]:
    """How many of ``images``' encoded pixels are in the state file and in its write-ahead log."""
    from edgetl_runtime.state.image_policy import encode_pixels

    # 200-byte pieces at several offsets: a blob longer than a page is spread over overflow pages.
    pieces = [[encode_pixels(img)[at : at + 200] for at in (20, 1500, 3000, 4500)] for img in images]
    files = {"db": state, "wal": Path(f"{state}-wal")}
    data = {k: p.read_bytes() if p.exists() else b"" for k, p in files.items()}
    return {k: sum(any(piece in d for piece in image) for image in pieces) for k, d in data.items()}


def test_forget_images_deletes_the_pixels_and_keeps_the_enrolments(tiny_bundle: Path, tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite"
    with Learner.load(tiny_bundle, state, backend="onnxruntime") as learner:
        images = _noise(3, seed=0)
        learner.add(images, "red")
        assert sum(_on_disk(state, images).values()) >= 3  # the check sees kept pixels where they are
        assert learner.forget_images() == 3
        assert _on_disk(state, images) == {"db": 0, "wal": 0}  # overwritten in the file, gone from the log
        assert learner.store.image_policy.to_text() == "none"
        assert len(learner.store) == 3 and list(learner.predict(images[:1])) == ["red"]
    with Learner.load(tiny_bundle, state, backend="onnxruntime") as learner:
        assert learner.storage()["images_kept"] == 0
        learner.add(_images(COLOURS["green"], 1, seed=1), "green")  # the state's policy is now features only
        assert learner.storage()["images_kept"] == 0


def test_removed_samples_images_leave_the_file_and_the_log(tiny_bundle: Path, tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite"
    with Learner.load(tiny_bundle, state, backend="onnxruntime") as learner:
        red, green = _noise(2, seed=1), _noise(2, seed=2)
        learner.add(red, "red")
        learner.add(green, "green")
        learner.remove(label="red")
        assert _on_disk(state, red) == {"db": 0, "wal": 0}
        assert sum(_on_disk(state, green).values()) >= 2  # the other class's images are still kept


def test_a_reader_holding_the_log_is_reported_and_save_finishes_the_job(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgetl_runtime.state import store as cache

    monkeypatch.setattr(cache, "BUSY_TIMEOUT_S", 0.2)
    state = tmp_path / "state.sqlite"
    with Learner.load(tiny_bundle, state, backend="onnxruntime") as learner:
        images = _noise(2, seed=3)
        learner.add(images, "red")
        reader = sqlite3.connect(state)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM samples").fetchone()  # another process, mid-read
        with pytest.warns(RuntimeWarning, match=r"still in its write-ahead log|stay in its write-ahead log"):
            learner.forget_images()
        reader.close()
        assert learner.save() is True
        assert _on_disk(state, images) == {"db": 0, "wal": 0}


def test_removing_a_class_deletes_its_kept_images(tiny_bundle: Path, tmp_path: Path) -> None:
    with Learner.load(tiny_bundle, tmp_path / "s.sqlite", backend="onnxruntime") as learner:
        learner.add(_images(COLOURS["red"], 2, seed=0), "red")
        learner.add(_images(COLOURS["green"], 2, seed=1), "green")
        learner.remove(label="red")
        storage = learner.storage()
        assert (storage["images"], storage["images_kept"]) == (2, 2)
        assert set(learner.store.images.kept_pixels(learner.store.samples_with_keys()[2])) == set(
            learner.store.samples_with_keys()[2]
        )


@pytest.mark.usefixtures("each_cpu")
def test_best_keeps_the_precision_the_state_has_features_for(two_model_bundle: Path, tmp_path: Path) -> None:
    from edgetl_runtime.state.peek import state_precision

    state = tmp_path / "state.sqlite"
    with Learner.load(two_model_bundle, state, backend="onnxruntime", precision="int8") as learner:
        _enrol(learner)
    manifest = Bundle.open(two_model_bundle).manifest
    assert state_precision(state, manifest) is Precision.INT8
    with Learner.load(two_model_bundle, state, backend="onnxruntime", precision="best", measure=False) as learner:
        assert learner.backend.precision is Precision.INT8 and learner.backbone_runs == 0


@pytest.mark.usefixtures("each_cpu")
@pytest.mark.parametrize("measure", [False, True])
def test_a_one_off_precision_does_not_change_what_best_runs_next(
    two_model_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, measure: bool
) -> None:
    """`edgetl-device --precision fp32 bench` computes fp32 features of every sample; afterwards `best` means the
    fastest of the precisions the state has features for, not the one that was computed last."""
    from edgetl_runtime.backends.selection import _OrtChooser

    faster_int8 = {Precision.INT8: 1.0, Precision.FP32: 9.0}
    monkeypatch.setattr(_OrtChooser, "time", lambda self, built: {p: faster_int8[p] for p in built})
    state = tmp_path / "state.sqlite"
    with Learner.load(two_model_bundle, state, backend="onnxruntime", precision="int8") as learner:
        _enrol(learner)
    with Learner.load(two_model_bundle, state, backend="onnxruntime", precision="fp32") as learner:
        assert learner.backbone_runs == 9  # the one-off command re-extracted every sample at fp32
    with Learner.load(two_model_bundle, state, backend="onnxruntime", precision="best", measure=measure) as learner:
        assert learner.backend.precision is Precision.INT8 and learner.backbone_runs == 0
        assert "the state has features for" in learner.info()["chosen_because"]


def test_a_damaged_kept_image_is_named_and_left_out_not_a_failed_load(two_model_bundle: Path, tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite"
    with Learner.load(two_model_bundle, state, backend="onnxruntime", precision="int8") as learner:
        _enrol(learner)
        victim = learner.store.samples_with_keys()[2][0]  # the first red sample's image
    with sqlite3.connect(state) as con:
        con.execute("UPDATE images SET pixels = x'00ff00' WHERE hash = ?", (victim,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        learner = Learner.load(two_model_bundle, state, backend="onnxruntime", precision="fp32")
    messages = [str(w.message) for w in caught]
    assert any("kept pixels of image" in m and "are damaged" in m for m in messages), messages
    assert not any("features only" in m for m in messages), messages  # not the features-only cause
    with learner:
        assert learner.unavailable == {"red": 1} and len(learner.store.samples()[0]) == 8
        assert learner.store.integrity_check() == [f"kept pixels of {victim[:12]}… do not decode: StateError"]


def test_re_extraction_reports_progress_batch_by_batch(two_model_bundle: Path, tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite"
    with Learner.load(two_model_bundle, state, backend="onnxruntime", precision="int8") as learner:
        _enrol(learner)
    calls: list[tuple[int, int]] = []
    learner = Learner.load(
        two_model_bundle, state, backend="onnxruntime", precision="fp32", progress=lambda d, t: calls.append((d, t))
    )
    learner.close()
    assert calls == [(9, 9)]  # one batch of 32 holds all nine


def test_asking_for_features_only_says_the_images_kept_earlier_stay_until_forgotten(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state.sqlite"
    with Learner.load(tiny_bundle, state, backend="onnxruntime") as learner:
        learner.add(_images(COLOURS["red"], 2, seed=0), "red")
    with pytest.warns(UserWarning, match=r"2 image\(s\) enrolled earlier are still kept.*forget_images"):
        learner = Learner.load(tiny_bundle, state, backend="onnxruntime", keep_images="none")
    with learner:
        learner.add(_images(COLOURS["green"], 1, seed=1), "green")
        assert learner.storage()["images_kept"] == 2  # the new one is not kept


def test_forget_images_in_one_process_stops_another_running_one_from_keeping_images(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state.sqlite"
    with (
        Learner.load(tiny_bundle, state, backend="onnxruntime") as first,
        Learner.load(tiny_bundle, state, backend="onnxruntime") as second,
    ):
        first.add(_noise(1, seed=4), "red")
        second.forget_images()
        images = _noise(2, seed=5)
        first.add(images, "green")  # opened when the policy was thumbnails: the file's policy wins
        assert first.store.storage()["images_kept"] == 0 and _on_disk(state, images) == {"db": 0, "wal": 0}
        assert first.store.image_policy.to_text() == "none"


def test_the_upscaling_warning_counts_real_thumbnails_whatever_the_policy_now(bundle_factory, tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite"
    with Learner.load(bundle_factory(), state, backend="onnxruntime", keep_images=16) as learner:
        learner.add(_images(COLOURS["red"], 2, seed=0, size=(40, 48)), "red")  # shrunk to 16 px
        learner.add(_images(COLOURS["green"], 1, seed=1, size=(16, 20)), "green")  # 16 px as enrolled: not shrunk
    with Learner.load(bundle_factory(seed=1), state, backend="onnxruntime", keep_images="original"):
        pass  # the policy changes; the thumbnails stay what they are
    bigger = PreprocessSpec(input_size=(32, 32), crop_pct=1.0, mean=TINY_SPEC.mean, std=TINY_SPEC.std)
    bundle = write_tiny_bundle(tmp_path / "bigger.edgetl", seed=2, spec=bigger)
    with pytest.warns(UserWarning, match=r"^2 kept thumbnail\(s\) have a shorter side of 16 px"):
        Learner.load(bundle, state, backend="onnxruntime").close()


def test_enrolling_again_restores_features_only_samples_instead_of_counting_them_twice(
    two_model_bundle: Path, tmp_path: Path
) -> None:
    """The features-only warning says "enrol those images again": doing so restores the samples."""
    state = tmp_path / "state.sqlite"
    with Learner.load(two_model_bundle, state, backend="onnxruntime", precision="int8", keep_images="none") as learner:
        enrolled = _enrol(learner)
        ids_before = learner.store.samples()[0].tolist()
    with pytest.warns(UserWarning, match="features only"):
        learner = Learner.load(two_model_bundle, state, backend="onnxruntime", precision="fp32", keep_images=384)
    with learner, warnings.catch_warnings():
        warnings.simplefilter("error")  # no "enrolled already ... count twice"
        assert learner.add(enrolled["red"], "red") == ids_before[:3]
        assert learner.add(enrolled["green"] + _images(COLOURS["green"], 1, seed=8), "green")[:3] == ids_before[3:6]
        assert learner.counts() == {"blue": 3, "green": 4, "red": 3}
        assert list(learner.predict(_images(COLOURS["red"], 2, seed=9))) == ["red", "red"]
        assert learner.unavailable == {"blue": 3}
    with Learner.load(two_model_bundle, state, backend="onnxruntime", precision="int8") as learner:
        assert learner.counts() == {"blue": 3, "green": 4, "red": 3}  # nothing counted twice at int8 either
        assert learner.backbone_runs == 1  # only the new green image; the restored ones kept int8
