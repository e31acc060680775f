"""One classifier from host to device to fleet, end to end on real Lite0 features at 64 px (fp32, small sets):
the export ships a head the device predicts with at once, devices extend it and export their enrolments,
and `edgetl merge` folds them into a bundle whose head equals a device that enrolled every shot itself."""

from __future__ import annotations

import json
import unicodedata
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from edgetl.cli import main
from edgetl.datasets import ImageDataset, from_arrays, load_fashion_mnist
from edgetl.export import BundleConfig, export_bundle
from edgetl.merge import MergeConfig, merge_enrolments
from edgetl.shipped_head import HeadConfig
from edgetl_runtime.bundle.manifest import Precision
from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.errors import DatasetError, EnrolmentError, EnrolmentMismatchError, InputError
from edgetl_runtime.learner import Learner

pytestmark = pytest.mark.host

HOST_CLASSES, DEVICE_CLASSES = [0, 1, 2], [3, 4, 5]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("fleet")
    train = load_fashion_mnist("train")
    rng = np.random.default_rng(0)
    picks = np.concatenate([rng.permutation(np.flatnonzero(train.labels == c))[:40] for c in range(6)])
    data = train.subset(np.sort(picks))
    host = data.select_classes(HOST_CLASSES)
    config = BundleConfig(precisions=("fp32",), pooling="avg", head=HeadConfig(rank=8, per_class=30))
    result = export_bundle(
        "tf_efficientnet_lite0", folder / "host.edgetl", data=host, config=config, image_size=64, head_data=host
    )
    names = data.classes
    shots = {names[c]: [data.images[i] for i in np.flatnonzero(data.labels == c)[:5]] for c in DEVICE_CLASSES}
    return {"folder": folder, "bundle": result.path, "data": data, "shots": shots}


def device(bundle: Path, state: Path | None = None) -> Learner:
    return Learner.load(bundle, state, backend="onnxruntime", precision="fp32")


def test_export_ships_a_measured_head_the_device_predicts_with(fleet: dict[str, Any]) -> None:
    bundle = Bundle.open(fleet["bundle"])
    head = bundle.manifest.head
    assert head["format"] == "class-stats" and head["format_version"] == 1
    assert list(bundle.manifest.head_labels) == ["Pullover", "T-shirt/top", "Trouser"]
    assert set(head["counts"].values()) == {24} and head["accuracy"]["images"] == 18  # 30 per class, 20 % held out
    assert head["accuracy"]["by_precision"]["fp32"] == head["accuracy"]["top1"]
    assert bundle.manifest.members["head.npz"].size < 0.1 * bundle.manifest.members["backbone.fp32.onnx"].size
    data: ImageDataset = fleet["data"]
    test = data.select_classes(HOST_CLASSES)
    with device(fleet["bundle"]) as learner:
        assert len(learner.store) == 0
        accuracy = learner.evaluate(list(test.images), [test.classes[i] for i in test.labels])["accuracy"]
    assert accuracy > 0.8


def test_two_devices_merge_into_what_one_device_learns_alone(fleet: dict[str, Any], tmp_path: Path) -> None:
    shots, names = fleet["shots"], sorted(fleet["shots"])
    queries = [img for imgs in shots.values() for img in imgs] + list(fleet["data"].images[:40])
    with device(fleet["bundle"], tmp_path / "a.sqlite") as a:
        a.add(shots[names[0]], names[0])
        a.add(shots[names[1]][:2], names[1])  # a label both devices enrol: one class after the merge
        a.export_enrolment(tmp_path / "a.enrol")
    with device(fleet["bundle"], tmp_path / "b.sqlite") as b:
        b.add(shots[names[1]][2:], names[1])
        b.add(shots[names[2]], names[2])
        b.add(shots[names[2]][:1], names[2])  # the same image twice under one label: counted once
        b.export_enrolment(tmp_path / "b.enrol")
    with device(fleet["bundle"]) as alone:  # the reference: one device enrols every shot itself
        for name in names:
            alone.add(shots[name], name)
        expected = alone.head.decision_function(alone.features(queries))
        expected_classes = list(alone.classes_)
    out = tmp_path / "merged.edgetl"
    argv = ["merge", str(fleet["bundle"]), str(tmp_path / "a.enrol"), str(tmp_path / "b.enrol"), "-o", str(out)]
    assert main(argv) == 0
    merged = Bundle.open(out)
    report = merged.manifest.head["merged"]
    assert (
        report["duplicates_counted_once"] == 1 and report["samples_merged"] == 15 and not report["conflicts_left_out"]
    )
    assert sorted(report["new_classes"]) == names
    original = Bundle.open(fleet["bundle"]).manifest
    for name in ("backbone.fp32.onnx", "golden.npz"):  # the backbone is untouched: same digest, same states
        assert merged.manifest.members[name] == original.members[name]
    with device(out) as c:  # a third device, nothing enrolled: every class, the same head as `alone`
        assert len(c.store) == 0 and list(c.classes_) == expected_classes
        got = c.head.decision_function(c.features(queries))
    np.testing.assert_allclose(got, expected, atol=2e-3)  # float16 factors / float32 sums in the file
    assert (got.argmax(1) == expected.argmax(1)).all()
    with device(out, tmp_path / "a.sqlite") as a_again:  # device A keeps its state; its merged samples count once
        assert a_again.store.counts() == {names[0]: 5, names[1]: 2}
        np.testing.assert_allclose(a_again.head.decision_function(a_again.features(queries)), got, atol=1e-9)
        a_again.add(list(fleet["data"].images[-1:]), names[0])  # a new local enrolment sits on top
        assert a_again.head.stats_.counts_by_label()[names[0]] == 6


def test_merge_refuses_foreign_tampered_or_conflicting_enrolments(fleet: dict[str, Any], tmp_path: Path) -> None:
    shots = fleet["shots"]
    name = sorted(shots)[0]
    with device(fleet["bundle"], tmp_path / "a.sqlite") as a:
        a.add(shots[name], name)
        a.add(shots[name][:1], "other label")  # one image under two labels
        good = a.export_enrolment(tmp_path / "a.enrol").path
    out = tmp_path / "merged.edgetl"
    with pytest.raises(InputError, match="under two labels"):
        merge_enrolments(fleet["bundle"], [good], out, MergeConfig(on_conflict="error"))
    assert not out.exists()
    result = merge_enrolments(fleet["bundle"], [good], out)  # default: the conflicting image is left out
    assert len(result.report["conflicts_left_out"]) == 1 and result.report["classes"][name] == 4
    foreign = export_bundle(
        "tf_efficientnet_lite0",
        tmp_path / "foreign.edgetl",
        data=fleet["data"],
        weights="none",  # same architecture, size and pooling; other weights, so another model digest
        config=BundleConfig(precisions=("fp32",), pooling="avg", ship_head=False),
        image_size=64,
    ).path
    with device(foreign) as f:
        f.add(shots[name], name)
        other = f.export_enrolment(tmp_path / "foreign.enrol").path
    with pytest.raises(EnrolmentMismatchError, match="Nothing was written"):
        merge_enrolments(fleet["bundle"], [other], tmp_path / "m2.edgetl")
    cut = tmp_path / "cut.enrol"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(EnrolmentError, match=r"2 enrolment file\(s\) refused"):
        merge_enrolments(fleet["bundle"], [cut, other], tmp_path / "m3.edgetl")
    assert main(["merge", str(fleet["bundle"]), str(other), "-o", str(tmp_path / "m4.edgetl")]) == 2
    assert not any((tmp_path / n).exists() for n in ("m2.edgetl", "m3.edgetl", "m4.edgetl"))
    with pytest.raises(EnrolmentMismatchError, match="not int8"):
        merge_enrolments(fleet["bundle"], [good], tmp_path / "m5.edgetl", MergeConfig(precision="int8"))


def test_export_cli_ships_a_head_from_class_folders_and_refuses_colliding_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folders = {"dark": 40, "bright": 200, "mid": 120}
    for name, level in folders.items():
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(6):
            pixels = np.clip(level + rng.integers(-30, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / name / f"{i}.png")
    out = tmp_path / "m.edgetl"
    argv = ["export", "tf_efficientnet_lite0", "--precision", "fp32", "--image-size", "64", "-o", str(out)]
    assert main([*argv, "--head-from", str(tmp_path / "data"), "--head-rank", "4"]) == 0
    assert Bundle.open(out).manifest.head_labels == ("bright", "dark", "mid")
    assert main(["inspect", str(out)]) == 0
    nfc = from_arrays(
        np.zeros((8, 8, 8), np.uint8), np.repeat([0, 1], 4), ["caf\u00e9", unicodedata.normalize("NFD", "caf\u00e9")]
    )
    with pytest.raises(DatasetError, match="one class once NFC-normalised"):
        export_bundle(
            "tf_efficientnet_lite0",
            tmp_path / "x.edgetl",
            config=BundleConfig(precisions=("fp32",)),
            image_size=64,
            head_data=nfc,
        )
    assert not (tmp_path / "x.edgetl").exists()
    with zipfile.ZipFile(out) as z:
        manifest = json.loads(z.read("manifest.json"))
    assert manifest["head"]["max_factor_rows"] <= 4 and manifest["head"]["source"].startswith("data/ ")
    assert Precision.FP32.member in manifest["members"]
