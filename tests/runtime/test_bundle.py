"""The bundle reader refuses anything it cannot verify, with a typed error and no side effects."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import zipfile
from pathlib import Path

import pytest

from edgetl_runtime.bundle.manifest import FORMAT_VERSION, BackboneInfo, Manifest, Precision
from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.errors import BundleError, BundleIntegrityError, EdgeTLError
from edgetl_runtime.preprocess import PreprocessSpec

pytestmark = pytest.mark.runtime


def _rewrite(src: Path, dst: Path, edit: dict[str, bytes | None], extra: list[zipfile.ZipInfo] | None = None) -> Path:
    """Copy a bundle, replacing (or dropping, with None) members, without fixing any hash."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = edit.get(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)
        for info in extra or []:
            zout.writestr(info, b"x")
    return dst


def _manifest(path: Path) -> dict:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("manifest.json"))


def test_round_trip_verifies_and_exposes_members(tiny_bundle: Path) -> None:
    bundle = Bundle.open(tiny_bundle)
    assert bundle.manifest.format_version == FORMAT_VERSION
    assert bundle.resolve_precision("best") is Precision.FP32
    golden = bundle.golden()
    assert golden["inputs"].shape[1:] == (3, 16, 16)
    assert golden["features"].shape[1] == bundle.manifest.backbone.feature_dim
    assert bundle.head_arrays() is None
    digest = hashlib.sha256(bundle.model_bytes(Precision.FP32)).hexdigest()
    assert bundle.manifest.model_digest(Precision.FP32) == digest


def test_best_precision_prefers_int8(bundle_factory) -> None:
    bundle = Bundle.open(bundle_factory(int8_copy=True))
    assert bundle.resolve_precision("best") is Precision.INT8
    with pytest.raises(BundleError, match="no fp16 model"):
        bundle.resolve_precision("fp16")
    with pytest.raises(BundleError, match="Unknown precision"):
        bundle.resolve_precision("int4")


def test_flipped_byte_in_a_member_is_detected(tiny_bundle: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(tiny_bundle) as z:
        model = bytearray(z.read("backbone.fp32.onnx"))
    model[len(model) // 2] ^= 0x01
    bad = _rewrite(tiny_bundle, tmp_path / "flip.edgetl", {"backbone.fp32.onnx": bytes(model)})
    with pytest.raises(BundleIntegrityError, match="fails verification"):
        Bundle.open(bad)


def test_manifest_with_wrong_hash_is_detected(tiny_bundle: Path, tmp_path: Path) -> None:
    manifest = _manifest(tiny_bundle)
    manifest["members"]["golden.npz"]["sha256"] = "0" * 64
    bad = _rewrite(tiny_bundle, tmp_path / "hash.edgetl", {"manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(BundleIntegrityError):
        Bundle.open(bad)


@pytest.mark.parametrize("version", [0, 2, "1", None, True, 1.0])
def test_unknown_format_version_is_refused(tiny_bundle: Path, tmp_path: Path, version: object) -> None:
    manifest = _manifest(tiny_bundle)
    manifest["format_version"] = version
    bad = _rewrite(tiny_bundle, tmp_path / "v.edgetl", {"manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(BundleError, match="format_version"):
        Bundle.open(bad)


@pytest.mark.parametrize("name", ["../evil.onnx", "/abs/evil.onnx", "a/../../evil", "c:\\evil", "dir\\..\\evil"])
def test_zip_slip_names_are_refused(tiny_bundle: Path, tmp_path: Path, name: str) -> None:
    bad = _rewrite(tiny_bundle, tmp_path / "slip.edgetl", {}, [zipfile.ZipInfo(name)])
    with pytest.raises(BundleError, match="unsafe member name"):
        Bundle.open(bad)


def test_symlink_member_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    link = zipfile.ZipInfo("link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    bad = _rewrite(tiny_bundle, tmp_path / "link.edgetl", {}, [link])
    with pytest.raises(BundleError, match="symbolic link"):
        Bundle.open(bad)


def test_truncated_and_empty_files_are_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    data = tiny_bundle.read_bytes()
    for size in (0, 10, len(data) // 2, len(data) - 5):
        cut = tmp_path / f"cut{size}.edgetl"
        cut.write_bytes(data[:size])
        with pytest.raises(BundleError):
            Bundle.open(cut)


def test_missing_and_unlisted_members_are_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    dropped = _rewrite(tiny_bundle, tmp_path / "drop.edgetl", {"golden.npz": None})
    with pytest.raises(BundleError, match="missing"):
        Bundle.open(dropped)
    extra = _rewrite(tiny_bundle, tmp_path / "extra.edgetl", {}, [zipfile.ZipInfo("payload.py")])
    with pytest.raises(BundleError, match="not in the manifest"):
        Bundle.open(extra)


def test_declared_zip_bomb_is_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.edgetl"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", "{}")
        z.writestr("golden.npz", b"\0" * (20 << 20))  # 20 MB of zeros deflate ~1000x
    with pytest.raises(BundleError, match="zip bomb"):
        Bundle.open(bomb)


def test_a_compressed_model_is_refused(tmp_path: Path) -> None:
    """The writer stores models uncompressed; a deflated one could inflate up to the ratio cap, so it is refused."""
    bomb = tmp_path / "bomb.edgetl"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", "{}")
        z.writestr("backbone.fp32.onnx", b"\0" * 1000)
    with pytest.raises(BundleError, match="stores models uncompressed"):
        Bundle.open(bomb)


@pytest.mark.parametrize(
    "text", [b"not json", b"[]", b'{"format_version": 1}', b'{"format_version": 1, "backbone": {"name": 3}}']
)
def test_malformed_manifest_is_a_bundle_error(text: bytes) -> None:
    with pytest.raises(BundleError):
        Manifest.from_json(text)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        Bundle.open(tmp_path / "nope.edgetl")
    with pytest.raises(BundleError):
        Bundle.open(tmp_path)


def test_errors_subclass_builtins() -> None:
    assert issubclass(BundleIntegrityError, ValueError) and issubclass(BundleIntegrityError, EdgeTLError)


def _tiny_manifest() -> Manifest:
    return Manifest(BackboneInfo("t", "t", "none", 4), PreprocessSpec(input_size=(16, 16)), members={})


def test_writer_leaves_nothing_half_written(tmp_path: Path) -> None:
    from edgetl_exporters import bundle_writer

    target = tmp_path / "out.edgetl"
    with pytest.raises(BundleError, match="golden"):
        bundle_writer.write_bundle(target, _tiny_manifest(), {"backbone.fp32.onnx": b"x"})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["../evil", "/abs/evil", "a\\b", "manifest.json"])
def test_writer_refuses_unsafe_or_reserved_member_names(tmp_path: Path, name: str) -> None:
    from edgetl_exporters import bundle_writer

    members = {"backbone.fp32.onnx": b"x", "golden.npz": b"g", name: b"evil"}
    with pytest.raises(BundleError, match="nothing was written"):
        bundle_writer.write_bundle(tmp_path / "out.edgetl", _tiny_manifest(), members)
    assert os.listdir(tmp_path) == []


def test_writer_keeps_the_old_bundle_when_the_new_one_does_not_read_back(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgetl_exporters import bundle_writer

    before = tiny_bundle.read_bytes()

    class Unreadable:
        @staticmethod
        def open(path: Path) -> Bundle:
            raise BundleError(f"{path} does not read back")

    monkeypatch.setattr(bundle_writer, "Bundle", Unreadable)
    with pytest.raises(BundleError, match="does not read back"):
        bundle_writer.write_bundle(tiny_bundle, _tiny_manifest(), {"backbone.fp32.onnx": b"x", "golden.npz": b"g"})
    assert tiny_bundle.read_bytes() == before
    assert sorted(os.listdir(tiny_bundle.parent)) == [tiny_bundle.name]  # no temp file left beside it


def test_written_files_get_open_permissions_and_replacements_keep_theirs(tmp_path: Path) -> None:
    """mkstemp creates owner-only files: a new bundle must get what a plain open() gives, a replaced one its own."""
    from edgetl_runtime.atomic import atomic_write

    umask = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "new.bin") as fh:
            fh.write(b"x")
        private = tmp_path / "private.bin"
        private.write_bytes(b"old")
        private.chmod(0o600)
        with atomic_write(private) as fh:
            fh.write(b"new")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "new.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and private.read_bytes() == b"new"


def test_manifest_without_fp32_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    manifest = _manifest(tiny_bundle)
    manifest["precisions"] = []
    bad = _rewrite(tiny_bundle, tmp_path / "nofp32.edgetl", {"manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(BundleError, match="lack fp32"):
        Bundle.open(bad)
