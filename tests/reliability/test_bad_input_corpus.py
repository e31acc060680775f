"""A corpus of bad inputs: each is refused with its SPECIFIC typed error (or CLI exit 2) and changes nothing on disk.

Each case (one line in ``CASES``: the exact error class, and how to prepare then act) prepares its files, then the folder is snapshotted (names + SHA-256 of bytes) and the enrolled
sample rows are read; after the refusal both must be identical.
"""
# ruff: noqa: E501  (the case table reads best one case per line)

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sqlite3
import stat
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgetl_runtime.bundle import Bundle
from edgetl_runtime.cli import main
from edgetl_runtime.errors import (
    BackendError,
    BundleError,
    BundleIntegrityError,
    ConfigError,
    InputError,
    NotFittedError,
    StateError,
)
from edgetl_runtime.learner import Learner

from ._support import COLORS, class_images, sample_rows, snapshot, write_tiny_bundle

pytestmark = pytest.mark.runtime
U8 = np.zeros((12, 14, 3), np.uint8)


@dataclass
class Ctx:
    dir: Path
    bundle: Path
    state: Path

    def load(self, bundle: Path | None = None, state: Path | str | None = "default", **kw: Any) -> Learner:
        kw = {"backend": "onnxruntime", "head": "ncm", **kw}
        return Learner.load(bundle or self.bundle, self.state if state == "default" else state, **kw)

    def with_learner(self, fn: Callable[[Learner], object], **kw: Any) -> Callable[[], object]:
        def act() -> object:
            with self.load(**kw) as learner:
                return fn(learner)

        return act

    def variant(self, name: str, edit: dict[str, bytes | None] | None = None, extra: dict[Any, bytes] | None = None,
                manifest: Callable[[dict[str, Any]], object] | None = None) -> Path:  # fmt: skip
        """Copy the bundle replacing/dropping members and editing the manifest, WITHOUT fixing any hash."""
        dst, edit = self.dir / name, dict(edit or {})
        with zipfile.ZipFile(self.bundle) as zin, zipfile.ZipFile(dst, "w") as zout, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # duplicate names are one of the cases
            for info in zin.infolist():
                data = edit.get(info.filename, zin.read(info))
                if info.filename == "manifest.json" and manifest is not None:
                    doc = json.loads(data or b"{}")
                    manifest(doc)
                    data = json.dumps(doc).encode()
                if data is not None:
                    zout.writestr(info.filename, data)
            for key, data in (extra or {}).items():
                zout.writestr(key, data)
        return dst

    def consistent(self, name: str, manifest: Callable[[dict[str, Any]], object] | None = None, **members: bytes) -> Path:
        """A hash-CONSISTENT bundle (the manifest re-signed over hostile members), as an attacker could write."""
        original = Bundle.open(self.bundle)
        merged = {**original.members, **{k.replace("__", "."): v for k, v in members.items()}}
        return signed_bundle(self.dir / name, json.loads(original.manifest.to_json()), merged, manifest)

    def member(self, name: str) -> bytes:
        with zipfile.ZipFile(self.bundle) as z:
            return z.read(name)

    def sql(self, *statements: str) -> None:
        con = sqlite3.connect(self.state)
        for statement in statements:
            con.execute(statement)
        con.commit()
        con.close()


def signed_bundle(dst: Path, doc: dict[str, Any], members: dict[str, bytes],
                  edit: Callable[[dict[str, Any]], object] | None = None, method: int = zipfile.ZIP_DEFLATED) -> Path:  # fmt: skip
    """Write ``members`` and a manifest hashing them, with no check at all (the bundle writer refuses hostile models)."""
    doc = {**doc, "members": {k: {"sha256": hashlib.sha256(v).hexdigest(), "size": len(v)} for k, v in members.items()}}
    if edit is not None:
        edit(doc)
    with zipfile.ZipFile(dst, "w") as archive:
        archive.writestr("manifest.json", json.dumps(doc), compress_type=zipfile.ZIP_DEFLATED)
        for key, data in members.items():
            archive.writestr(key, data, compress_type=method)
    return dst


def _flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


def _declare_huge(path: Path, member: bytes) -> Path:
    """Patch the central directory so ``member`` claims ~2 GB uncompressed (a declared zip bomb)."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        name_len = int.from_bytes(data[at + 28 : at + 30], "little")
        if bytes(data[at + 46 : at + 46 + name_len]) == member:
            data[at + 24 : at + 28] = (0x7FFFFFF0).to_bytes(4, "little")
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(data))
    return path


def _npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _symlink_zip(c: Ctx) -> Path:
    link = zipfile.ZipInfo("evil_link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    return c.variant("link.edgetl", extra={link: b"/etc/passwd"})


def _other_bundle_state(c: Ctx) -> Path:
    other = write_tiny_bundle(c.dir / "other.edgetl", seed=1)
    with c.load(other, c.dir / "other.sqlite") as learner:
        learner.add([U8], "x")
    return c.dir / "other.sqlite"


def _foreign_db(c: Ctx) -> Path:
    con = sqlite3.connect(c.dir / "foreign.sqlite")
    con.execute("CREATE TABLE users (name TEXT)")
    con.commit()
    con.close()
    return c.dir / "foreign.sqlite"


def _file(c: Ctx, name: str, data: bytes) -> Path:
    (c.dir / name).write_bytes(data)
    return c.dir / name


def _cli(*args: str) -> Callable[[Ctx], Callable[[], object]]:
    def prepare(c: Ctx) -> Callable[[], object]:
        argv = ["--bundle", str(c.bundle), "--state", str(c.state), *args]
        return lambda: main([a.replace("{dir}", str(c.dir)) for a in argv])

    return prepare


def _open(path_of: Callable[[Ctx], Path]) -> Callable[[Ctx], Callable[[], object]]:
    """Case: prepare a bad bundle, then load a Learner on it (with the good state)."""

    def prepare(c: Ctx) -> Callable[[], object]:
        bad = path_of(c)
        return lambda: c.load(bad).close()

    return prepare


def _add_file(name: str, data: bytes) -> Callable[[Ctx], Callable[[], object]]:
    def prepare(c: Ctx) -> Callable[[], object]:
        bad = _file(c, name, data)
        return c.with_learner(lambda learner: learner.add([bad], "x"))

    return prepare


def _cli_on(
    bundle_of: Callable[[Ctx], Path] | None = None, state_of: Callable[[Ctx], Path] | None = None
) -> Callable[[Ctx], Callable[[], object]]:
    def prepare(c: Ctx) -> Callable[[], object]:
        bundle, state = (bundle_of or (lambda c: c.bundle))(c), (state_of or (lambda c: c.state))(c)
        return lambda: main(["--bundle", str(bundle), "--state", str(state), "info"])

    return prepare


def _add(images: Any, labels: Any = "x") -> Callable[[Ctx], Callable[[], object]]:
    return lambda c: c.with_learner(lambda learner: learner.add(images, labels))


def _state(prepare_state: Callable[[Ctx], Path | None]) -> Callable[[Ctx], Callable[[], object]]:
    """Case: prepare a bad state (a new file, or the good one edited in place), then load a Learner on it."""

    def prepare(c: Ctx) -> Callable[[], object]:
        bad = prepare_state(c) or c.state
        return lambda: c.load(state=bad).close()

    return prepare


CASES: dict[str, tuple[type[Exception] | int, Callable[[Ctx], Callable[[], object]]]] = {
    # --- bundles -------------------------------------------------------------------------------------------------
    "bundle-truncated-zip": (BundleError, _open(lambda c: _file(c, "t.edgetl", c.bundle.read_bytes()[:700]))),
    "bundle-zero-bytes": (BundleError, _open(lambda c: _file(c, "z.edgetl", b""))),
    "bundle-not-a-zip": (BundleError, _open(lambda c: _file(c, "png.edgetl", b"\x89PNG\r\n\x1a\n" + b"\0" * 64))),
    "bundle-is-a-directory": (BundleError, _open(lambda c: c.dir)),
    "bundle-flipped-byte-onnx": (BundleIntegrityError, _open(lambda c: c.variant("f.edgetl", {"backbone.fp32.onnx": _flip(c.member("backbone.fp32.onnx"), 100)}))),
    "bundle-flipped-byte-golden": (BundleIntegrityError, _open(lambda c: c.variant("g.edgetl", {"golden.npz": _flip(c.member("golden.npz"), 50)}))),
    "bundle-manifest-wrong-hash": (BundleIntegrityError, _open(lambda c: c.variant("h.edgetl", manifest=lambda m: m["members"]["golden.npz"].update(sha256="0" * 64)))),
    "bundle-member-longer-than-manifest": (BundleIntegrityError, _open(lambda c: c.variant("l.edgetl", {"golden.npz": c.member("golden.npz") + b"\0"}))),
    "bundle-format-version-2": (BundleError, _open(lambda c: c.variant("v.edgetl", manifest=lambda m: m.update(format_version=2)))),
    "bundle-zip-slip-name": (BundleError, _open(lambda c: c.variant("s.edgetl", extra={"../../evil.py": b"x"}))),
    "bundle-absolute-name": (BundleError, _open(lambda c: c.variant("a.edgetl", extra={"/etc/cron.d/evil": b"x"}))),
    "bundle-symlink-member": (BundleError, _open(_symlink_zip)),
    "bundle-declared-zip-bomb": (BundleError, _open(lambda c: _declare_huge(c.variant("b.edgetl"), b"golden.npz"))),
    "bundle-duplicate-member": (BundleError, _open(lambda c: c.variant("d.edgetl", extra={"golden.npz": b"x"}))),
    "bundle-no-manifest": (BundleError, _open(lambda c: c.variant("n.edgetl", {"manifest.json": None}))),
    "bundle-manifest-not-json": (BundleError, _open(lambda c: c.variant("j.edgetl", {"manifest.json": b"{nope"}))),
    "bundle-manifest-deeply-nested": (BundleError, _open(lambda c: c.variant("r.edgetl", {"manifest.json": b"[" * 100000}))),
    "bundle-unlisted-member": (BundleError, _open(lambda c: c.variant("u.edgetl", extra={"payload.py": b"import os"}))),
    "bundle-missing-member": (BundleError, _open(lambda c: c.variant("m.edgetl", {"golden.npz": None}))),
    "bundle-absurd-input-size": (BundleError, _open(lambda c: c.variant("i.edgetl", manifest=lambda m: m["preprocess"].update(input_size=[10**6, 10**6])))),
    "bundle-nan-mean": (BundleError, _open(lambda c: c.variant("nan.edgetl", manifest=lambda m: m["preprocess"].update(mean=[float("nan")] * 3)))),
    "bundle-feature-dim-lies": (BackendError, _open(lambda c: c.variant("fd.edgetl", manifest=lambda m: m["backbone"].update(feature_dim=32)))),
    "bundle-signed-garbage-onnx": (BundleError, _open(lambda c: c.consistent("o.edgetl", backbone__fp32__onnx=b"\x08\x07garbage"))),
    "bundle-signed-golden-not-npz": (BundleError, _open(lambda c: c.consistent("gn.edgetl", golden__npz=b"not a zip"))),
    "bundle-signed-golden-missing-key": (BundleError, _open(lambda c: c.consistent("gk.edgetl", golden__npz=_npz(inputs=np.zeros((1, 3, 16, 16), np.float32))))),
    "bundle-signed-golden-wrong-shape": (BundleError, _open(lambda c: c.consistent("gs.edgetl", golden__npz=_npz(inputs=np.zeros((1, 3, 8, 8), np.float32), features=np.zeros((1, 16), np.float32))))),
    # --- images ---------------------------------------------------------------------------------------------------
    "image-nan-pixels": (InputError, _add([np.full((8, 8, 3), np.nan)])),
    "image-inf-pixels": (InputError, _add([np.full((8, 8, 3), np.inf, np.float32)])),
    "image-float-dtype": (InputError, _add([np.full((8, 8, 3), 0.5, np.float32)])),
    "image-int64-dtype": (InputError, _add([np.zeros((8, 8, 3), np.int64)])),
    "image-bool-dtype": (InputError, _add([np.zeros((8, 8, 3), bool)])),
    "image-string-dtype": (InputError, _add([np.array([["a"]])])),
    "image-5d-batch": (InputError, _add(np.zeros((1, 1, 8, 8, 3), np.uint8))),
    "image-4d-in-list": (InputError, _add([np.zeros((8, 8, 3, 1), np.uint8)])),
    "image-two-channels": (InputError, _add([np.zeros((8, 8, 2), np.uint8)])),
    "image-empty-list": (InputError, _add([])),
    "image-zero-height": (InputError, _add([np.zeros((0, 5, 3), np.uint8)])),
    "image-ragged-nested-list": (InputError, _add([[[1, 2], [3]]])),
    "image-extreme-aspect-ratio": (InputError, _add([np.zeros((1, 5000, 3), np.uint8)])),
    "image-not-a-sequence": (InputError, _add({"a": U8})),
    "image-missing-file": (InputError, lambda c: c.with_learner(lambda learner: learner.add([c.dir / "none.png"], "x"))),
    "image-text-file": (InputError, _add_file("t.png", b"hello")),
    "image-zero-byte-file": (InputError, _add_file("e.jpg", b"")),
    "image-directory": (InputError, lambda c: c.with_learner(lambda learner: learner.add([c.dir], "x"))),
    # --- labels and learner calls -----------------------------------------------------------------------------
    "label-count-mismatch": (InputError, _add([U8, U8], ["a"])),
    "label-empty-string": (InputError, _add([U8], [""])),
    "label-none": (InputError, _add([U8], None)),
    "remove-unknown-label": (InputError, lambda c: c.with_learner(lambda learner: learner.remove(label="purple"))),
    "remove-unknown-ids": (InputError, lambda c: c.with_learner(lambda learner: learner.remove(ids=[10**6]))),
    "remove-label-and-ids": (InputError, lambda c: c.with_learner(lambda learner: learner.remove(label="red", ids=[1]))),
    "predict-bad-image": (InputError, lambda c: c.with_learner(lambda learner: learner.predict([np.zeros((8, 8), np.float64)]))),
    "predict-before-enrolment": (NotFittedError, lambda c: c.with_learner(lambda learner: learner.predict([U8]), state=None)),
    # --- state databases --------------------------------------------------------------------------------------
    "state-of-another-bundle": (StateError, _state(_other_bundle_state)),
    "state-garbage-bytes": (StateError, _state(lambda c: _file(c, "g.sqlite", b"not sqlite" * 500))),
    "state-damaged-pages": (StateError, _state(lambda c: _file(c, "p.sqlite", c.state.read_bytes()[:4096] + b"\xa5" * (len(c.state.read_bytes()) - 4096)))),
    "state-foreign-sqlite": (StateError, _state(_foreign_db)),
    "state-schema-version-99": (StateError, _state(lambda c: c.sql("UPDATE meta SET value = '99' WHERE key = 'schema_version'"))),
    "state-truncated-feature": (StateError, _state(lambda c: c.sql("UPDATE features SET vec = substr(vec, 1, 8)"))),
    "state-invalid-utf8-label": (StateError, _state(lambda c: c.sql("UPDATE samples SET label = CAST(x'ff80' AS TEXT)"))),
    "state-damaged-schema-text": (StateError, _state(lambda c: c.sql("PRAGMA writable_schema=ON", "UPDATE sqlite_master SET sql = replace(sql, 'feature_key TEXT', 'feature_kex TEXT') WHERE name = 'samples'"))),
    "state-path-is-directory": (StateError, _state(lambda c: c.dir)),
    "state-in-missing-directory": (StateError, _state(lambda c: c.dir / "no" / "such" / "state.sqlite")),
    # --- options --------------------------------------------------------------------------------------------------
    "option-unknown-backend": (ConfigError, lambda c: lambda: c.load(backend="openvino")),
    "option-unknown-precision": (BundleError, lambda c: lambda: c.load(precision="int4")),
    "option-precision-not-shipped": (BundleError, lambda c: lambda: c.load(precision="int8")),
    "option-unknown-head": (InputError, lambda c: lambda: c.load(head="svm")),
    # --- edgetl-device CLI: exit code 2 and a message on stderr ---------------------------------------------
    "cli-missing-bundle": (2, _cli_on(lambda c: c.dir / "nope.edgetl")),
    "cli-tampered-bundle": (2, _cli_on(lambda c: c.variant("t.edgetl", {"golden.npz": _flip(c.member("golden.npz"), 50)}))),
    "cli-corrupt-state": (2, _cli_on(state_of=lambda c: _file(c, "x.sqlite", b"junk" * 300))),
    "cli-unknown-backend": (2, _cli("--backend", "openvino", "info")),
    "cli-unknown-head": (2, _cli("--head", "svm", "info")),
    "cli-negative-threads": (2, _cli("--threads", "-3", "info")),
    "cli-bench-zero-runs": (2, _cli("bench", "--runs", "0")),
    "cli-no-command": (2, _cli()),
    "cli-add-not-a-folder": (2, _cli("add", "{dir}/nothing", "--label", "x")),
    "cli-add-folder-without-images": (2, _cli("add", "{dir}", "--label", "x")),
    "cli-predict-missing-file": (2, _cli("predict", "{dir}/none.png")),
    "cli-remove-unknown-label": (2, _cli("remove", "--label", "purple")),
}  # fmt: skip


@pytest.fixture(scope="module")
def template(reliability_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("template") / "state.sqlite"
    with Learner.load(reliability_bundle, state, backend="onnxruntime", head="ncm") as learner:
        learner.add(class_images(COLORS["red"], 2, 0), "red")
        learner.add(class_images(COLORS["green"], 2, 1), "green")
    return state


def test_corpus_is_large_and_covers_every_kind() -> None:
    kinds = {name.split("-")[0] for name in CASES}
    assert len(CASES) >= 30 and kinds == {"bundle", "image", "label", "remove", "predict", "state", "option", "cli"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_and_changes_nothing(
    case: str, reliability_bundle: Path, template: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if case.startswith("image-") and "file" in case:
        pytest.importorskip("PIL")
    expected, prepare = CASES[case]
    ctx = Ctx(tmp_path, Path(shutil.copy(reliability_bundle, tmp_path / "tiny.edgetl")), tmp_path / "state.sqlite")
    shutil.copy(template, ctx.state)
    act = prepare(ctx)
    before, rows = snapshot(tmp_path), sample_rows(ctx.state)
    capsys.readouterr()
    if isinstance(expected, int):
        try:
            code = act()
        except SystemExit as exc:  # argparse refuses bad arguments itself, also with exit code 2
            code = exc.code
        err = capsys.readouterr().err
        assert code == expected and "error" in err and len(err.strip()) > 20, (code, err)
    else:
        with pytest.raises(expected) as info:
            act()
        assert type(info.value) is expected, f"{type(info.value).__name__} is not exactly {expected.__name__}"
        assert len(str(info.value)) > 20
    assert snapshot(tmp_path) == before, "the refused call changed files on disk"
    assert sample_rows(ctx.state) == rows, "the refused call changed the enrolled samples"
