"""Photos on the host: one image decoder for host and device, a shipped head that records its images, and the
host commands a user runs on a small folder of photos.

 The tricky files are real photo crops (skimage) saved
as a JPEG with EXIF Orientation=6, a 16-bit PNG, a palette PNG with transparency and an RGBA PNG.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from user_photos import PHOTOS, photo_crops

from edgetl.cli import main
from edgetl_runtime.images import image_digest, load_image

pytestmark = pytest.mark.host

CLASSES = PHOTOS[:2]


def write_tricky(folder: Path, name: str, seed: int) -> list[Path]:
    """Five photo crops of ``name``, each saved in a way the two old decoders read differently."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    crops = photo_crops(name, 5, seed)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": most phone photos carry one
    paths = [folder / "rotated.jpg", folder / "wide16.png", folder / "palette.png", folder / "alpha.png"]
    Image.fromarray(crops[0]).save(paths[0], exif=exif, quality=95)
    gray = crops[1].mean(axis=2)
    Image.fromarray((gray * 257).astype(np.uint16)).save(paths[1])  # 16-bit: the old loader clipped it white
    Image.fromarray(crops[2]).quantize(64).save(paths[2], transparency=0)
    rgba = np.dstack([crops[3], np.full(crops[3].shape[:2], 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(paths[3])
    paths.append(folder / "plain.jpg")
    Image.fromarray(crops[4]).save(paths[4])
    return paths


@pytest.fixture(scope="module")
def tricky(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("tricky")
    files = {c: write_tricky(root / "photos" / c, c, seed=3 * i) for i, c in enumerate(CLASSES)}
    flat = write_tricky(root / "flat", CLASSES[0], seed=11)
    device = {image_digest(load_image(p)): p for paths in files.values() for p in paths}
    return {"root": root, "photos": root / "photos", "flat": root / "flat", "files": files, "flat_files": flat,
            "device": device}  # fmt: skip


def _same_as_device(images: Any, keys: list[str], device: dict[str, Path]) -> None:
    """Every host image is the device's decode of one file, pixel for pixel, and carries its key."""
    assert len(images) == len(keys)
    for image, key in zip(images, keys, strict=True):
        assert key in device
        np.testing.assert_array_equal(np.asarray(image), load_image(device[key]))


def test_the_tricky_files_differ_under_a_naive_decode(tricky: dict[str, Any]) -> None:
    """The fixture is tricky: a plain Pillow convert("RGB") reads the rotated and 16-bit files differently."""
    from PIL import Image

    rotated, wide = tricky["files"][CLASSES[0]][:2]
    with Image.open(rotated) as im:
        assert np.asarray(im.convert("RGB")).shape != load_image(rotated).shape
    with Image.open(wide) as im:
        assert np.asarray(im.convert("RGB")).mean() > load_image(wide).mean() + 50


def test_every_host_entry_point_decodes_like_the_device(tricky: dict[str, Any]) -> None:
    from edgetl.sources import SplitRule, load_calibration, load_data, load_splits, training_data

    device = tricky["device"]
    photos = str(tricky["photos"])
    train, val, test = load_splits(photos, SplitRule(test_fraction=0.4))  # finetune --data
    assert val is None and test is not None
    for part in (train, test):
        _same_as_device(part.images, part.image_keys(), device)
    for data in (
        load_data(photos),  # --head-from, bench fewshot
        load_calibration(photos),  # --calib (class folders)
        training_data({"source": photos, "classes": None}),  # export of a fine-tuned run: its own data
    ):
        assert len(data) == 10
        _same_as_device(data.images, data.image_keys(), device)
    flat = load_calibration(str(tricky["flat"]))  # --calib (a folder of unlabelled photos)
    flat_device = {image_digest(load_image(p)): p for p in tricky["flat_files"]}
    _same_as_device(flat.images, flat.image_keys(), flat_device)


def test_large_photos_are_held_shrunk_with_the_devices_key(tmp_path: Path) -> None:
    from PIL import Image

    from edgetl.datasets import HOST_MIN_SIDE, load_image_folder
    from edgetl_runtime.images import shrink

    big = np.kron(photo_crops("chelsea", 1, 0)[0], np.ones((20, 20, 1), np.uint8))[:1600, :2000]  # >= 1200 px
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.fromarray(big).save(tmp_path / c / "big.jpg", quality=90)
    data = load_image_folder(tmp_path)
    full = load_image(tmp_path / "a" / "big.jpg")
    assert min(data.images[0].shape[:2]) >= HOST_MIN_SIDE
    assert data.images[0].nbytes * 4 <= full.nbytes  # held at a quarter of the pixels or fewer
    assert data.image_keys()[0] == image_digest(full)  # the key of what a device decodes, not of the shrunk copy
    np.testing.assert_array_equal(data.images[0], shrink(full, HOST_MIN_SIDE))
    np.testing.assert_array_equal(load_image(tmp_path / "a" / "big.jpg", min_side=HOST_MIN_SIDE), data.images[0])


# --------------------------------------------------- features and the shipped head's keys (items 1 and 2)


@pytest.fixture(scope="module")
def shipped(tricky: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "photos.edgetl"
    code = main(["export", "tf_efficientnet_lite0", "--precision", "fp32", "--image-size", "64",
                 "--head-from", str(tricky["photos"]), "-o", str(out)])  # fmt: skip
    assert code == 0
    return out


def test_host_and_device_features_of_the_tricky_files_agree(tricky: dict[str, Any], shipped: Path) -> None:
    from edgetl.shipped_head import member_features
    from edgetl.sources import load_data
    from edgetl_runtime.bundle import Bundle
    from edgetl_runtime.bundle.manifest import Precision
    from edgetl_runtime.learner import Learner

    bundle = Bundle.open(shipped)
    host = load_data(str(tricky["photos"]))
    host_features = member_features(bundle.members[Precision.FP32.member], bundle.manifest.preprocess, host.images)
    paths = [tricky["device"][k] for k in host.image_keys()]
    with Learner.load(shipped, backend="onnxruntime", precision="fp32", measure=False) as learner:
        device_features = learner.features(paths)
    np.testing.assert_allclose(host_features, device_features, rtol=1e-4, atol=1e-4)


def test_the_device_sees_the_photos_the_shipped_head_counts(
    tricky: dict[str, Any], shipped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgetl_runtime.bundle import Bundle
    from edgetl_runtime.bundle.shipped_head import read_prior
    from edgetl_runtime.cli import main as device_main

    bundle = Bundle.open(shipped)
    prior = read_prior(bundle)
    assert prior is not None
    fitted = bundle.manifest.head["fitted"]
    assert len(prior.counted_keys) == fitted["images"] == fitted["image_keys_recorded"] == 8  # 4 of 5 per class
    label = CLASSES[0]
    state = tmp_path / "s.sqlite"
    argv = ["--bundle", str(shipped), "--state", str(state), "--backend", "onnxruntime", "--precision", "fp32"]
    argv.append("--no-measure")
    capsys.readouterr()
    assert device_main([*argv, "add", str(tricky["photos"] / label), "--label", label]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["already_enrolled"] == out["counted_by_shipped_head"] == 4  # the 5th was held out to measure
    assert "shipped head" in out["note"]


# ---- the host CLI


def test_bench_fewshot_on_a_small_folder_skips_the_k_it_cannot_draw_without_sklearn(
    tricky: dict[str, Any], shipped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)  # scikit-learn is a dev extra: `import sklearn` fails here
    monkeypatch.setitem(sys.modules, "sklearn.linear_model", None)
    out_dir = tmp_path / "bench"
    argv = ["bench", "fewshot", str(shipped), "--data", str(tricky["photos"]), "--shots", "1,5", "--seeds", "2"]
    code = main([*argv, "--threads", "1", "--output-dir", str(out_dir)])  # default --precisions fp32,int8
    out = capsys.readouterr().out
    assert code == 0
    assert "note: K=5 skipped" in out and "note: int8 skipped: the bundle ships fp32" in out and "K=1" in out
    saved = json.loads((out_dir / "fewshot_photos.json").read_text())
    assert {r["shots"] for r in saved["accuracy"]} == {1} and saved["notes"]
    assert not any(r["head"] == "sklearn_lr" for r in saved["accuracy"])


def test_inspect_describes_an_enrolment_file(
    tricky: dict[str, Any], shipped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgetl_runtime.learner import Learner

    with Learner.load(shipped, tmp_path / "s.sqlite", backend="onnxruntime", precision="fp32", measure=False) as dev:
        dev.add(tricky["flat_files"], "mug")
        dev.export_enrolment(tmp_path / "a.enrol")
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "a.enrol")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("enrolment") and "5 in 1 classes: mug 5" in out and "edgetl merge" in out


def test_bench_latency_of_a_precision_the_bundle_lacks_is_a_one_line_error(
    shipped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["bench", "latency", str(shipped), "--precisions", "fp16", "--backends", "onnxruntime", "--no-probe",
                 "--output-dir", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "ships fp32, none of the requested precisions fp16" in err
    assert not list(tmp_path.iterdir())  # no empty table or plot


def test_bundles_name_their_sources_not_the_hosts_paths(tricky: dict[str, Any], shipped: Path) -> None:
    from edgetl.sources import source_name
    from edgetl_runtime.bundle import Bundle

    assert source_name(str(tricky["photos"])) == "photos/" and source_name("Fashion-MNIST") == "fashion-mnist"
    manifest = Bundle.open(shipped).manifest.to_json()
    assert str(tricky["root"]) not in manifest and "photos/ classes all" in manifest
