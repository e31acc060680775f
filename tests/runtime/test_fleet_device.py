"""The device side of one classifier from host to fleet, on tiny real bundles: a shipped head predicts out of
the box, enrolments extend it, a removed shipped class stays removed, and enrolments leave as verified files."""

from __future__ import annotations

import dataclasses
import io
import json
import unicodedata
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny_bundles import tiny_onnx, write_tiny_bundle

from edgetl_runtime.bundle.manifest import HEAD_NAME, Precision
from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.bundle.shipped_head import head_npz_dict, head_section
from edgetl_runtime.cli import main as device_main
from edgetl_runtime.enrolment import read_enrolment, write_enrolment
from edgetl_runtime.errors import (
    BundleError,
    ConfigError,
    EnrolmentError,
    EnrolmentIntegrityError,
    EnrolmentMismatchError,
    InputError,
)
from edgetl_runtime.heads import ClassStats, LDAHead, Prior
from edgetl_runtime.learner import Learner

pytestmark = pytest.mark.runtime

COLORS = {"red": (220, 30, 30), "green": (30, 220, 30), "blue": (30, 30, 220), "grey": (128, 128, 128)}


def images(color: str, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = np.array(COLORS[color], dtype=np.int16)
    return [np.clip(base + rng.integers(-25, 26, size=(18, 22, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


def ship(plain: Path, out: Path, prior: Prior | None, **edit: Any) -> Path:
    """``plain``'s members plus a head.npz of ``prior`` (``edit`` overrides manifest fields or head arrays)."""
    from edgetl_exporters.bundle_writer import npz_bytes, write_bundle

    original = Bundle.open(plain)
    members = dict(original.members)
    manifest = original.manifest
    if prior is not None:
        arrays = {**head_npz_dict(prior), **edit.pop("arrays", {})}
        members[HEAD_NAME] = npz_bytes(arrays)
        section = {**head_section(prior, accuracy={"top1": 1.0}), **edit.pop("head", {})}
        labels = tuple(str(c) for c in prior.classes)
        manifest = dataclasses.replace(manifest, head_labels=labels, head=section)
    write_bundle(out, dataclasses.replace(manifest, **edit), members)
    return out


@pytest.fixture
def host(tmp_path: Path) -> dict[str, Any]:
    """A tiny bundle, and the same bundle shipping a head over red and green (fitted on its fp32 features)."""
    onnx = pytest.importorskip("onnx")
    stand_in = onnx.load_from_string(tiny_onnx())  # the fp32 graph under another digest: an "int8" member
    stand_in.doc_string = "int8 stand-in"
    int8 = {Precision.INT8.member: stand_in.SerializeToString()}
    plain = write_tiny_bundle(tmp_path / "plain.edgetl", int8_copy=True, members_extra=int8)
    with Learner.load(plain, backend="onnxruntime", precision="fp32", shipped_head=False) as learner:
        X = learner.features(images("red", 20, 1) + images("green", 20, 2))
    prior = Prior(ClassStats.from_features(X, ["red"] * 20 + ["green"] * 20, rank=4), alpha=0.01, temperature=0.1)
    return {"plain": plain, "prior": prior, "shipped": ship(plain, tmp_path / "shipped.edgetl", prior)}


def load(bundle: Path, state: Path | None = None, **kw: Any) -> Learner:
    return Learner.load(bundle, state, backend="onnxruntime", precision=kw.pop("precision", "fp32"), **kw)


def test_shipped_head_predicts_out_of_the_box_and_enrolments_extend_it(host: dict[str, Any], tmp_path: Path) -> None:
    state = tmp_path / "device.sqlite"
    with load(host["shipped"], state) as device:
        assert len(device.store) == 0 and list(device.classes_) == ["green", "red"]
        assert list(device.predict(images("red", 3, 9) + images("green", 3, 8))) == ["red"] * 3 + ["green"] * 3
        assert device.info()["shipped_head"]["classes"] == {"green": 20, "red": 20}
        device.add(images("blue", 3, 3), "blue")  # a new class
        device.add(images("red", 2, 4), "red")  # more samples of a shipped class: the same class
        assert isinstance(device.head, LDAHead) and list(device.classes_) == ["blue", "green", "red"]
        assert device.head.stats_.counts_by_label() == {"blue": 3, "green": 20, "red": 22}
        assert list(device.predict(images("blue", 2, 7))) == ["blue", "blue"]
        before = device.head.decision_function(device.features(images("grey", 2, 6)))
    with load(host["shipped"], state) as again:  # the head is refit from the prior and the state: same result
        np.testing.assert_allclose(again.head.decision_function(again.features(images("grey", 2, 6))), before)
    with load(host["shipped"], None, head="ncm") as ncm:
        assert list(ncm.predict(images("green", 2, 5))) == ["green", "green"]
    with pytest.raises(ConfigError, match="cannot continue"):
        load(host["shipped"], None, head="logistic")
    with load(host["shipped"], None, head="logistic", shipped_head=False) as ignoring:
        assert ignoring.prior is None


def test_removing_a_shipped_class_is_recorded_and_survives_a_reload(host: dict[str, Any], tmp_path: Path) -> None:
    state = tmp_path / "device.sqlite"
    with load(host["shipped"], state) as device:
        assert device.remove(label="red") == 0  # no enrolled sample, but the shipped class goes
        assert list(device.classes_) == ["green"]
        device.add(images("red", 2, 3), "red")  # enrolling the label again starts the class from these samples
        assert device.head.stats_.counts_by_label() == {"green": 20, "red": 2}
        with pytest.raises(InputError, match=r"Unknown label .purple.*green"):
            device.remove(label="purple")
    with load(host["shipped"], state) as again:
        assert again.store.removed_shipped_labels() == ["red"]
        assert again.head.stats_.counts_by_label() == {"green": 20, "red": 2}
        again.remove(label="red")
        again.remove(label="green")
        with pytest.raises(Exception, match="every shipped class was removed"):
            again.predict(images("green", 1, 0))


def test_state_stays_valid_when_the_bundle_changes_only_its_head(host: dict[str, Any], tmp_path: Path) -> None:
    """A merged bundle keeps the backbone members, hence the model digest that keys the state."""
    state = tmp_path / "device.sqlite"
    with load(host["shipped"], state) as device:
        device.add(images("blue", 3, 3), "blue")
    other = host["prior"].drop(["green"])
    assert other is not None
    replaced = ship(host["plain"], tmp_path / "merged.edgetl", other)
    assert Bundle.open(replaced).manifest.model_digest(Precision.FP32) == Bundle.open(
        host["shipped"]
    ).manifest.model_digest(Precision.FP32)
    with load(replaced, state) as device:  # same state file: enrolments sit on top of the new head
        assert device.counts() == {"blue": 3} and list(device.classes_) == ["blue", "red"]


def test_a_merged_heads_counted_samples_are_recognised_at_every_precision(host: dict[str, Any], tmp_path: Path) -> None:
    """A merge records the samples it folded in by image key, so a device never counts them twice, whichever
    precision it enrolled them at or runs now; keys of enrolment files written before (pixels + model) count
    too, whatever model runs now."""
    from edgetl_runtime.heads.prior import key_prefixes

    state = tmp_path / "device.sqlite"
    with load(host["shipped"], state, precision="int8") as device:
        device.add(images("blue", 3, 3), "green")  # counted under the label the device gives them
        enrolment = device.export_enrolment(tmp_path / "d.enrol")
        legacy = [device.store.images.feature_key(k) for k in enrolment.keys]  # schema-1 keys: image, int8 model
    assert len(enrolment.keys) == 3
    green = np.zeros(3, dtype=np.int64)  # index of "green" in the prior's classes (green, red)
    merged = ship(
        host["plain"],
        tmp_path / "m.edgetl",
        dataclasses.replace(host["prior"], counted_keys=key_prefixes(enrolment.keys), counted_class=green),
    )
    old = ship(
        host["plain"],
        tmp_path / "old.edgetl",
        dataclasses.replace(host["prior"], counted_keys=key_prefixes(legacy), counted_class=green),
    )
    for precision in ("int8", "fp32"):
        with load(merged, state, precision=precision) as device:
            _, labels, keys, _ = device.store.samples_with_keys()
            assert device.keeper.already_counted(keys, labels).tolist() == [True] * 3
        with load(old, state, precision=precision) as device:  # the int8 model is known to the state
            _, labels, keys, _ = device.store.samples_with_keys()
            assert device.keeper.already_counted(keys, labels).tolist() == [True] * 3


def test_export_enrolment_round_trips_and_is_bound_to_the_model(host: dict[str, Any], tmp_path: Path) -> None:
    files = []
    for i, img in enumerate(images("blue", 3, 3)):
        from PIL import Image

        files.append(tmp_path / f"b{i}.png")
        Image.fromarray(img).save(files[-1])
    with load(host["shipped"], tmp_path / "a.sqlite", precision="int8") as device:
        device.add(files, "blue")
        device.add(images("red", 2, 4), "red")
        device.remove(label="green")
        plain = device.export_enrolment(tmp_path / "a.enrol")
        with_images = device.export_enrolment(tmp_path / "a-img.enrol", images=[*files, tmp_path / "b0.png"])
        _, _, keys, features = device.store.samples_with_keys()
    assert plain.counts() == {"blue": 3, "red": 2} and plain.images == {}
    assert plain.info["removed_shipped_labels"] == ["green"] and plain.precision is Precision.INT8
    np.testing.assert_array_equal(plain.features, features)
    assert plain.keys == keys and len(with_images.images) == 3 and set(with_images.images) <= set(keys)
    manifest = Bundle.open(host["shipped"]).manifest
    assert plain.check_bundle(manifest) is Precision.INT8
    with pytest.raises(EnrolmentMismatchError, match="not fp32"):
        plain.check_bundle(manifest, Precision.FP32)
    other = Bundle.open(write_tiny_bundle(tmp_path / "other.edgetl", seed=3)).manifest
    with pytest.raises(EnrolmentMismatchError, match="does not ship"):
        plain.check_bundle(other)
    with load(host["shipped"], None) as empty, pytest.raises(InputError, match="Nothing is enrolled"):
        empty.export_enrolment(tmp_path / "none.enrol")
    assert not (tmp_path / "none.enrol").exists()


def _rewrite(src: Path, dst: Path, edit: Any) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info, data)
    return dst


def test_tampered_truncated_or_forged_enrolments_are_refused(host: dict[str, Any], tmp_path: Path) -> None:
    with load(host["shipped"], None) as device:
        device.add(images("blue", 3, 3), "blue")
        good = device.export_enrolment(tmp_path / "good.enrol").path
    raw = good.read_bytes()
    (tmp_path / "cut.enrol").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(EnrolmentError, match="truncated or damaged"):
        read_enrolment(tmp_path / "cut.enrol")

    def flip(name: str, data: bytes) -> bytes:
        return data[:-9] + bytes([data[-9] ^ 1]) + data[-8:] if name == "enrolment.npz" else data

    with pytest.raises(EnrolmentIntegrityError, match="fails verification"):
        read_enrolment(_rewrite(good, tmp_path / "flip.enrol", flip))

    def version(name: str, data: bytes) -> bytes:
        return data.replace(b'"format_version": 1', b'"format_version": 2') if name == "manifest.json" else data

    with pytest.raises(EnrolmentError, match="format_version 2"):
        read_enrolment(_rewrite(good, tmp_path / "v2.enrol", version))
    with pytest.raises(EnrolmentError, match="not an edgetl enrolment"):
        read_enrolment(host["shipped"])
    extra = _rewrite(good, tmp_path / "extra.enrol", lambda n, d: d)
    with zipfile.ZipFile(extra, "a") as z:
        z.writestr("evil.txt", b"x")
    with pytest.raises(EnrolmentError, match="not listed"):
        read_enrolment(extra)


def test_enrolment_labels_that_collide_after_normalisation_are_refused(host: dict[str, Any], tmp_path: Path) -> None:
    manifest = Bundle.open(host["shipped"]).manifest
    nfc, nfd = "caf\u00e9", unicodedata.normalize("NFD", "caf\u00e9")
    with pytest.raises(EnrolmentError, match="one class once NFC-normalised"):
        write_enrolment(
            tmp_path / "x.enrol",
            manifest=manifest,
            precision=Precision.FP32,
            ids=np.array([1, 2]),
            labels=np.array([nfc, nfd]),
            keys=["a" * 64, "b" * 64],
            features=np.ones((2, 16), np.float32),
        )
    assert not (tmp_path / "x.enrol").exists()  # nothing half-written


def test_bad_shipped_heads_are_typed_errors_naming_the_fix(host: dict[str, Any], tmp_path: Path) -> None:
    prior: Prior = host["prior"]
    narrow = Prior(ClassStats.from_features(np.random.default_rng(0).random((8, 8)), ["a", "b"] * 4), 0.01, 0.1)
    with pytest.raises(BundleError, match=r"8 wide but the backbone.s are 16.*re-export"):
        load(ship(host["plain"], tmp_path / "narrow.edgetl", narrow))
    with pytest.raises(BundleError, match=r"head format version 9.*upgrade edgetl-runtime"):
        load(ship(host["plain"], tmp_path / "v9.edgetl", prior, head={"format_version": 9}))
    with pytest.raises(BundleError, match="differ from the manifest"):
        load(ship(host["plain"], tmp_path / "labels.edgetl", prior, head_labels=("green", "blue")))
    bad_counts = {"counts": -np.asarray(prior.stats.counts)}
    with pytest.raises(BundleError, match="counts must be"):
        load(ship(host["plain"], tmp_path / "counts.edgetl", prior, arrays=bad_counts))
    nfd = Prior(
        ClassStats.from_features(np.random.default_rng(0).random((4, 16)), [unicodedata.normalize("NFD", "é")] * 4),
        0.01,
        0.1,
    )
    with pytest.raises(BundleError, match="not NFC"):
        load(ship(host["plain"], tmp_path / "nfd.edgetl", nfd))
    legacy = {"kind": np.array("linear"), "coef": np.ones((2, 16), np.float32)}
    legacy |= {"intercept": np.zeros(2, np.float32), "classes": np.array(["a", "b"])}
    old = ship(host["plain"], tmp_path / "old.edgetl", None, head_labels=("a", "b"))
    with zipfile.ZipFile(old) as z:  # an older export's linear head: ignored with a warning
        assert "head.npz" not in z.namelist()
    from edgetl_exporters.bundle_writer import npz_bytes, write_bundle

    original = Bundle.open(old)
    write_bundle(tmp_path / "linear.edgetl", original.manifest, {**original.members, HEAD_NAME: npz_bytes(legacy)})
    with pytest.warns(UserWarning, match="cannot extend"), load(tmp_path / "linear.edgetl") as device:
        assert device.prior is None


def test_device_cli_exports_and_removes_a_shipped_class(
    host: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    folder = tmp_path / "blue"
    folder.mkdir()
    for i, img in enumerate(images("blue", 3, 3)):
        Image.fromarray(img).save(folder / f"{i}.png")
    base = ["--bundle", str(host["shipped"]), "--state", str(tmp_path / "s.sqlite"), "--no-measure"]
    assert device_main([*base, "add", str(folder), "--label", "blue"]) == 0
    assert device_main([*base, "remove", "--label", "red"]) == 0
    assert _last(capsys)["removed_shipped_class"] == "red"
    assert device_main([*base, "export", str(tmp_path / "d.enrol"), "--images", str(folder)]) == 0
    out = _last(capsys)
    assert out["samples"] == 3 and out["images"] == 3 and out["classes"] == {"blue": 3}
    assert device_main([*base, "info"]) == 0
    assert _last(capsys)["shipped_head"]["removed_here"] == ["red"]


def _last(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    text = capsys.readouterr().out.strip()
    start = text.rfind("\n{") + 1
    result: dict[str, Any] = json.loads(text[start:])
    return result


def test_a_head_merged_before_counted_keys_had_labels_still_loads_and_says_to_merge_again(
    host: dict[str, Any], tmp_path: Path
) -> None:
    """Old merged bundles load and predict as before; their unlabelled counted keys are not trusted."""
    from edgetl_exporters.bundle_writer import npz_bytes, write_bundle
    from edgetl_runtime.heads.prior import key_prefixes

    state = tmp_path / "device.sqlite"
    with load(host["shipped"], state, precision="int8") as device:
        device.add(images("blue", 3, 3), "green")
        keys = device.export_enrolment(tmp_path / "d.enrol").keys
    merged = ship(
        host["plain"],
        tmp_path / "m.edgetl",
        dataclasses.replace(host["prior"], counted_keys=key_prefixes(keys), counted_class=np.zeros(3, np.int64)),
    )
    original = Bundle.open(merged)
    arrays = dict(np.load(io.BytesIO(original.members[HEAD_NAME]), allow_pickle=False))
    del arrays["counted_class"]  # what an edgetl before the labelled counted keys wrote
    old = tmp_path / "old.edgetl"
    write_bundle(old, original.manifest, {**original.members, HEAD_NAME: npz_bytes(arrays)})
    with pytest.warns(UserWarning, match=r"merged by an older edgetl.*3 counted key\(s\) carry no label.*merge again"):
        device = load(old, tmp_path / "fresh.sqlite", precision="int8")
    with device:
        assert sorted(device.classes_) == sorted(str(c) for c in host["prior"].classes)
        assert len(device.predict(images("blue", 2, 9))) == 2


# ------------------------------------------------------------------ issue 21, item 2: restore a shipped class


def test_issue21_item2_restore_shipped_brings_a_removed_shipped_class_back(
    host: dict[str, Any], tmp_path: Path
) -> None:
    state = tmp_path / "device.sqlite"
    with load(host["shipped"], state) as device:
        device.remove(label="red")
        assert list(device.classes_) == ["green"]
    with load(host["shipped"], state) as again:
        again.restore_shipped("red")
        assert again.removed_shipped_classes() == [] and list(again.classes_) == ["green", "red"]
        assert list(again.predict(images("red", 2, 9))) == ["red", "red"]
        with pytest.raises(InputError, match="not a shipped class removed"):
            again.restore_shipped("red")  # not removed (any more): nothing to restore
    with load(host["shipped"], state) as later:  # the restore is recorded, not only in this process
        assert later.head.stats_.counts_by_label() == {"green": 20, "red": 20}


def test_issue21_item2_cli_remove_says_what_it_did_and_restore_undoes_it(
    host: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    base = ["--bundle", str(host["shipped"]), "--state", str(tmp_path / "s.sqlite"), "--no-measure"]
    folder = tmp_path / "reds"
    folder.mkdir()
    for i, img in enumerate(images("red", 2, 4)):
        Image.fromarray(img).save(folder / f"{i}.png")
    assert device_main([*base, "add", str(folder), "--label", "red"]) == 0
    assert device_main([*base, "add", str(folder), "--label", "red"]) == 0  # the same images again
    note = _last(capsys)["note"]
    assert "--skip-duplicates" in note and "restore --label red" in note and "shipped" in note
    assert device_main([*base, "remove", "--label", "red"]) == 0
    out = _last(capsys)
    assert out["removed"] == 4 and out["removed_shipped_class"] == "red"
    assert "no longer predicted on this device" in out["note"] and "edgetl-device restore --label red" in out["note"]
    assert device_main([*base, "restore", "--label", "red"]) == 0
    out = _last(capsys)
    assert out["restored_shipped_class"] == "red" and out["shipped_classes"] == ["green", "red"]
    assert device_main([*base, "info"]) == 0
    assert _last(capsys)["shipped_head"]["removed_here"] == []
    assert device_main([*base, "restore", "--label", "green"]) == 2  # never removed: a one-line error
    assert "not a shipped class removed" in capsys.readouterr().err
