"""The device runtime on ARM64: bundle verification, golden checks per precision and int8 preset, a full
enrol / fit / predict / remove cycle on real Fashion-MNIST images with its SQLite state reopened, and the
installed ``edgetl-device`` command. Public runtime APIs only (``Bundle.open``, ``create_backend``,
``check_against_golden``, ``Learner``), so a change of kernels or manifest fields keeps these valid.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import runpy
import shutil
import sqlite3
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from edgetl_runtime.backends import check_against_golden, create_backend
from edgetl_runtime.bundle.manifest import Precision
from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.errors import EdgeTLError
from edgetl_runtime.learner import Learner

pytestmark = pytest.mark.arm64


def _exported_presets() -> tuple[str, ...]:
    """The int8 targets scripts/arm64_bundles.py exported (edgetl_exporters' PRESETS less host/auto)."""
    done = Path(os.environ.get("EDGETL_ARM64_BUNDLES", "")) / "done.json"
    return tuple(json.loads(done.read_text())["presets"]) if done.is_file() else ()


PRESETS = _exported_presets()
REQUIRED_PRESETS = {"x86-avx2", "x86-vnni", "arm", "tensorrt"}

EXPECTED_MACHINE = os.environ.get("EDGETL_ARM64_EXPECT_MACHINE")  # "aarch64" under make test-arm64
CPU = os.environ.get("EDGETL_ARM64_CPU", "native") if EXPECTED_MACHINE else "native"
SHOTS = 5
QUERIES = 10  # per class
CLI_CLASSES = ("Trouser", "Sneaker", "Bag")


@dataclass(frozen=True)
class Images:
    """Fashion-MNIST t10k images (uint8 28x28) with integer labels and the class names."""

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    classes: tuple[str, ...]

    def of_class(self, name: str, start: int, count: int) -> list[npt.NDArray[np.uint8]]:
        rows = np.flatnonzero(self.labels == self.classes.index(name))[start : start + count]
        return [self.images[i] for i in rows]


@pytest.fixture(scope="session")
def bundle_dir() -> Path:
    folder = Path(os.environ["EDGETL_ARM64_BUNDLES"])
    missing = [p for p in (*(f"{name}.edgetl" for name in PRESETS), "fmnist.npz") if not (folder / p).is_file()]
    assert not missing, f"{folder} lacks {missing}; scripts/arm64_bundles.py writes them"
    return folder


@pytest.fixture(scope="session")
def fmnist(bundle_dir: Path) -> Images:
    with np.load(bundle_dir / "fmnist.npz") as data:
        return Images(data["images"], data["labels"], tuple(str(c) for c in data["classes"]))


@pytest.fixture(scope="session")
def results() -> Iterator[dict[str, Any]]:
    """Numbers the tests measured, merged into $EDGETL_ARM64_OUT/results.json for the runner's summary."""
    collected: dict[str, Any] = {}
    yield collected
    out = os.environ.get("EDGETL_ARM64_OUT")
    if out and collected:
        path = Path(out) / "results.json"
        previous = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps({**previous, **collected}, indent=2, sort_keys=True) + "\n")


def test_every_int8_target_was_exported(bundle_dir: Path) -> None:
    assert REQUIRED_PRESETS <= set(PRESETS), PRESETS


def test_this_is_the_device_environment() -> None:
    """Really ARM64 (when asked), the runtime installed as a package, and none of the host's ML stack."""
    if EXPECTED_MACHINE:
        assert platform.machine() == EXPECTED_MACHINE
        for host_only in ("torch", "timm", "onnx", "edgetl", "edgetl_exporters"):
            assert importlib.util.find_spec(host_only) is None, f"{host_only} must not be in the device env"
    import edgetl_runtime

    assert importlib.metadata.version("edgetl-runtime") == edgetl_runtime.__version__
    installed = os.environ.get("EDGETL_ARM64_PATH")
    if installed:  # the copy pip installed from runtime/, not the source tree
        assert Path(edgetl_runtime.__file__).resolve().is_relative_to(Path(installed).resolve())
    assert "torch" not in sys.modules


@pytest.mark.parametrize("preset", PRESETS)
def test_bundle_verifies(bundle_dir: Path, preset: str) -> None:
    bundle = Bundle.open(bundle_dir / f"{preset}.edgetl")  # every member's SHA-256 checked
    assert {Precision.FP32, Precision.INT8} <= set(bundle.manifest.precisions)
    assert bundle.manifest.preprocess.input_size == (96, 96)


def test_a_damaged_bundle_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.edgetl"
    shutil.copyfile(bundle_dir / "arm.edgetl", damaged)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a model member
    damaged.write_bytes(bytes(data))
    with pytest.raises(EdgeTLError):
        Bundle.open(damaged)


@pytest.mark.parametrize(("preset", "precision"), [("arm", "fp32"), *((p, "int8") for p in PRESETS)])
def test_golden(bundle_dir: Path, preset: str, precision: str, results: dict[str, Any]) -> None:
    """The backend reproduces the host's features at its precision (checked inside create_backend too)."""
    bundle = Bundle.open(bundle_dir / f"{preset}.edgetl")
    backend = create_backend(bundle, backend="onnxruntime", precision=precision)  # raises on a golden mismatch
    assert backend.precision is Precision(precision)
    report = check_against_golden(backend, bundle)
    assert report.passed, report.to_dict()
    assert report.reference == ("features" if precision == "fp32" else "features_int8")
    assert report.min_cosine_fp32 > 0.8  # int8 against the torch fp32 reference: a sanity bound only (as on the host)
    results[f"{CPU}:golden:{preset}:{precision}"] = report.to_dict()


def _accuracy(learner: Learner, images: list[Any], labels: list[str]) -> float:
    return float(np.mean(learner.predict(images) == np.asarray(labels)))


def test_enrol_fit_predict_remove_and_reopen(
    bundle_dir: Path, fmnist: Images, tmp_path: Path, results: dict[str, Any]
) -> None:
    """Ten classes, five shots each, on the arm preset's int8 model; the state survives a reopen.

    The precision is named: ``best`` would time int8 against fp32 at load, which under emulation
    measures qemu, not the device.
    """
    state = tmp_path / "state.sqlite"
    queries: list[Any] = []
    truth: list[str] = []
    for name in fmnist.classes:
        queries += fmnist.of_class(name, SHOTS, QUERIES)
        truth += [name] * QUERIES
    with warnings.catch_warnings():  # the arm preset is meant for ARM64: no "not built for this CPU" warning
        if EXPECTED_MACHINE == "aarch64":
            warnings.simplefilter("error", UserWarning)
        learner = Learner.load(bundle_dir / "arm.edgetl", state, precision="int8")
    with learner:
        assert learner.backend.name.startswith("onnxruntime") and learner.backend.precision is Precision.INT8
        for name in fmnist.classes:
            assert len(learner.add(fmnist.of_class(name, 0, SHOTS), name)) == SHOTS
        learner.fit()
        assert sorted(learner.classes_) == sorted(fmnist.classes)
        predicted = learner.predict(queries)
        accuracy = float(np.mean(predicted == np.asarray(truth)))
        assert accuracy >= 0.5, f"5-shot 10-way accuracy {accuracy:.2f} (chance 0.10)"
        assert learner.remove(label="Bag") == SHOTS
        after = learner.predict(queries)
        assert "Bag" not in set(after) and "Bag" not in set(learner.classes_)
        proba = learner.predict_proba(queries[:4])
        assert proba.shape == (4, len(fmnist.classes) - 1) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)

    with sqlite3.connect(state) as db:  # the state is a sound SQLite file written on ARM64
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    with Learner.load(
        bundle_dir / "arm.edgetl", state, precision="int8"
    ) as reopened:  # head refit from the stored features
        assert len(reopened.store) == SHOTS * (len(fmnist.classes) - 1)
        assert sorted(reopened.classes_) == sorted(c for c in fmnist.classes if c != "Bag")
        assert np.array_equal(reopened.predict(queries), after)

    enrolled = SHOTS * (len(fmnist.classes) - 1)
    with Learner.load(bundle_dir / "arm.edgetl", state, precision="fp32") as fp32:  # the same state, another model
        assert fp32.extractor.backbone_runs == enrolled  # features re-extracted once, from the kept images
        assert len(fp32.store.samples()[0]) == enrolled and fp32.unavailable == {}
        fp32_accuracy = _accuracy(fp32, queries, truth)
        assert fp32_accuracy >= 0.5, f"fp32 from kept images: 5-shot accuracy {fp32_accuracy:.2f}"
    results[f"{CPU}:cycle"] = {
        "accuracy_5shot_10way": accuracy,
        "int8_accuracy_after_removing_bag": float(np.mean(after == np.asarray(truth))),  # Bag queries now wrong
        "fp32_from_kept_images_accuracy_after_removing_bag": fp32_accuracy,
        "queries": len(queries),
    }


def _device(argv: list[str]) -> tuple[int, str, str]:
    """Run the installed ``edgetl-device`` console script in this (emulated) interpreter."""
    script = os.environ.get("EDGETL_DEVICE_SCRIPT") or shutil.which("edgetl-device")
    assert script, "the edgetl-device console script is not installed"
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = [script, *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.argv = saved
    return code, out.getvalue(), err.getvalue()


def test_edgetl_device_cli(bundle_dir: Path, fmnist: Images, tmp_path: Path) -> None:
    """info, add (PNG folders written with Pillow), fit, predict, remove, bench, and an error's exit code."""
    from PIL import Image

    base = ["--bundle", str(bundle_dir / "arm.edgetl"), "--state", str(tmp_path / "cli.sqlite"), "--precision", "int8"]
    queries: list[tuple[Path, str]] = []
    for name in CLI_CLASSES:
        folder = tmp_path / name
        folder.mkdir()
        for i, image in enumerate(fmnist.of_class(name, 0, SHOTS + 2)):
            path = (folder if i < SHOTS else tmp_path) / f"{name}-{i}.png"
            Image.fromarray(image).save(path)
            if i >= SHOTS:
                queries.append((path, name))

    code, out, err = _device([*base, "info"])
    assert code == 0, err
    assert json.loads(out)
    for name in CLI_CLASSES:
        code, out, err = _device([*base, "add", str(tmp_path / name), "--label", name])
        assert code == 0, err
        assert json.loads(out)["added"] == SHOTS
    code, out, err = _device([*base, "fit"])
    assert code == 0, err
    assert sorted(json.loads(out)["classes"]) == sorted(CLI_CLASSES)
    code, out, err = _device([*base, "predict", *(str(p) for p, _ in queries)])
    assert code == 0, err
    predictions = json.loads(out)["predictions"]
    correct = sum(p["label"] == name for p, (_, name) in zip(predictions, queries, strict=True))
    assert correct >= len(queries) - 1, predictions
    code, out, err = _device([*base, "remove", "--label", "Bag"])
    assert code == 0, err
    assert json.loads(out)["removed"] == SHOTS
    code, out, err = _device([*base, "bench", "--runs", "2"])
    assert code == 0, err
    assert json.loads(out)["precision"] == "int8"
    code, out, err = _device([*base, "predict", str(tmp_path / "missing.png")])
    assert code == 2 and "error" in err and not out
