"""The device Learner on a tiny real bundle: enrol, fit, predict, persist, and refuse bad input."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from edgetl_runtime.errors import BundleError, ConfigError, InputError, NotFittedError, StateError
from edgetl_runtime.learner import Learner

pytestmark = pytest.mark.runtime


def _class_images(color: tuple[int, int, int], n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = np.array(color, dtype=np.int16)
    return [np.clip(base + rng.integers(-20, 21, size=(18, 22, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


RED, GREEN, BLUE = (220, 30, 30), (30, 220, 30), (30, 30, 220)


def test_enrol_fit_predict_cycle(tiny_bundle: Path) -> None:
    learner = Learner.load(tiny_bundle, backend="onnxruntime", head="ncm")
    learner.add(_class_images(RED, 3, 0), "red")
    learner.add(_class_images(GREEN, 3, 1), ["green"] * 3)
    assert list(learner.classes_) == ["green", "red"]
    test = _class_images(RED, 4, 2) + _class_images(GREEN, 4, 3)
    assert list(learner.predict(test)) == ["red"] * 4 + ["green"] * 4
    proba = learner.predict_proba(test)
    assert proba.shape == (8, 2) and np.allclose(proba.sum(1), 1)
    assert (proba[:4, 1] > 0.5).all()
    report = learner.evaluate(test, ["red"] * 4 + ["green"] * 4)
    assert report["accuracy"] == 1.0


def test_one_shot_classes_come_and_go(tiny_bundle: Path) -> None:
    learner = Learner.load(tiny_bundle, backend="onnxruntime")
    for name, color in (("red", RED), ("green", GREEN), ("blue", BLUE)):
        learner.add(_class_images(color, 1, 0), name)
    assert learner.predict(_class_images(BLUE, 1, 5))[0] == "blue"
    learner.remove(label="blue")
    assert "blue" not in learner.classes_
    with pytest.raises(InputError):
        learner.remove(label="purple")


def test_cache_means_no_backbone_rerun_and_state_persists(tiny_bundle: Path, tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite"
    images = _class_images(RED, 2, 0) + _class_images(GREEN, 2, 1)
    learner = Learner.load(tiny_bundle, state, backend="onnxruntime", flip_enrolment=False)
    learner.add(images, ["red", "red", "green", "green"])
    runs = learner.backbone_runs
    learner.add(images[:1], "red")  # a known image: no backbone run
    assert learner.backbone_runs == runs
    learner.save()
    learner.close()
    again = Learner.load(tiny_bundle, state, backend="onnxruntime", flip_enrolment=False)
    assert len(again.store) == 5 and again.extractor.backbone_runs == 0
    assert again.predict(images[:1])[0] == "red"
    assert again.extractor.backbone_runs == 0  # predicting a cached image needs no backbone either


def test_corrupt_state_file_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite"
    state.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError):
        Learner.load(tiny_bundle, state, backend="onnxruntime")
    assert state.read_bytes() == b"this is not sqlite" * 100


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        ([], "a", "No images"),
        ([np.zeros((8, 8, 3), np.float32)], "a", "dtype float32"),
        ([np.full((8, 8), np.nan)], "a", "NaN"),
        ([np.zeros((2, 8, 8, 3, 1), np.uint8)], "a", "shape"),
        (np.zeros((1, 1, 8, 8, 3), np.uint8), "a", "image array"),
        ([np.zeros((8, 8, 3), np.uint8)] * 2, ["a"], "one label per image"),
        ([np.zeros((8, 8, 3), np.uint8)], [""], "non-empty"),
        (["/no/such/file.png"], "a", "does not exist"),
    ],
)
def test_bad_enrolment_input_is_refused_and_writes_nothing(tiny_bundle: Path, images, labels, match: str) -> None:
    learner = Learner.load(tiny_bundle, backend="onnxruntime")
    with pytest.raises(InputError, match=match):
        learner.add(images, labels)
    assert len(learner.store) == 0


def test_non_image_file_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    learner = Learner.load(tiny_bundle, backend="onnxruntime")
    with pytest.raises(InputError, match="is not a JPEG, PNG, BMP, GIF, TIFF, WEBP image"):
        learner.add([fake], "a")


def test_predict_before_enrolment_and_bad_options(tiny_bundle: Path) -> None:
    learner = Learner.load(tiny_bundle, backend="onnxruntime")
    with pytest.raises(NotFittedError, match="No samples"):
        learner.predict(_class_images(RED, 1, 0))
    with pytest.raises(ConfigError):
        Learner.load(tiny_bundle, backend="openvino")
    with pytest.raises(BundleError, match="no int8"):
        Learner.load(tiny_bundle, precision="int8")


def test_predict_while_another_thread_enrols(tiny_bundle: Path) -> None:
    learner = Learner.load(tiny_bundle, backend="onnxruntime", head="ncm")
    learner.add(_class_images(RED, 2, 0), "red")
    learner.add(_class_images(GREEN, 2, 1), "green")
    probe = _class_images(RED, 2, 9)
    errors: list[BaseException] = []
    stop = threading.Event()

    def predictor() -> None:
        while not stop.is_set():
            try:
                assert learner.predict(probe)[0] == "red"
            except BaseException as exc:  # collected and re-raised in the main thread
                errors.append(exc)
                return

    threads = [threading.Thread(target=predictor) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(10):
        learner.add(_class_images(BLUE, 1, 100 + i), "blue")
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert learner.counts()["blue"] == 10


def test_an_add_hashes_each_image_once_writes_its_features_once_and_a_load_opens_the_state_once(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One hash, one transaction, one open: counted, not timed (timings on a shared machine cannot show it)."""
    import sqlite3

    from edgetl_runtime import features

    rng = np.random.default_rng(3)
    new = [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(3)]
    state = tmp_path / "s.sqlite"
    with Learner.load(tiny_bundle, state, backend="onnxruntime", precision="fp32") as learner:
        learner.add([rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)], "a")  # the state exists now
    opened: list[str] = []
    real_connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: opened.append(str(a[0])) or real_connect(*a, **k))
    with Learner.load(tiny_bundle, state, backend="onnxruntime", precision="fp32") as learner:
        # the state file once: not a peek first and then the store (":memory:" is the schema check's reference)
        assert [name for name in opened if name != ":memory:"] == [str(state)], opened
        hashed: list[int] = []
        real_digest = features.image_digest
        monkeypatch.setattr(features, "image_digest", lambda img: hashed.append(1) or real_digest(img))
        statements: list[str] = []
        learner.store.connection.db.set_trace_callback(statements.append)
        enrolled = learner.enrol(new, "b")
        learner.store.connection.db.set_trace_callback(None)
    assert enrolled.added == 3 and len(hashed) == 3
    writes = [s for s in statements if s.lstrip().upper().startswith("INSERT INTO FEATURES")]
    assert len(writes) == 3 and statements.count("BEGIN IMMEDIATE") == 1, statements
