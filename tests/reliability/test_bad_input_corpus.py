"""A corpus of bad inputs: each is refused with its SPECIFIC typed error (or CLI exit 2) and changes nothing on disk.

Each case (one line in ``CASES``: the exact error class, and how to prepare then act) prepares its files, then the folder is snapshotted (names + SHA-256 of bytes) and the enrolled
sample rows are read; after the refusal both must be identical.
"""
# ruff: noqa: E501  (the case table reads best one case per line)

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import stat
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.cli import main
from edgetl_runtime.errors import (
    BackendError,
    BundleError,
    BundleIntegrityError,
    ConfigError,
    InputError,
    NotFittedError,
    StateError,
    StateFullError,
    StateLockedError,
)
from edgetl_runtime.learner import Learner
from edgetl_runtime.state.schema import SCHEMA, statements

from . import _hostile as H
from ._support import COLORS, class_images, sample_rows, snapshot

pytestmark = pytest.mark.runtime
U8 = np.zeros((12, 14, 3), np.uint8)


@dataclass
class Ctx:
    dir: Path
    bundle: Path
    state: Path
    cleanup: list[Callable[[], object]] = field(default_factory=list)  # run after the comparisons

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

    def consistent(self, name: str, manifest: Callable[[dict[str, Any]], object] | None = None,
                   methods: dict[str, int] | None = None, **members: bytes) -> Path:  # fmt: skip
        """A hash-CONSISTENT bundle (the manifest re-signed over hostile members), as an attacker could write."""
        return H.resign(self.bundle, self.dir / name, manifest, methods, **members)

    def member(self, name: str) -> bytes:
        with zipfile.ZipFile(self.bundle) as z:
            return z.read(name)

    def sql(self, *statements: str) -> None:
        con = sqlite3.connect(self.state)
        for statement in statements:
            con.execute(statement)
        con.commit()
        con.close()

    def manifest_text(self, edit: Callable[[str], str]) -> Path:
        """The bundle with its manifest's raw JSON text edited (for what json.dumps cannot write: duplicate keys)."""
        text = json.dumps(json.loads(self.member("manifest.json")))
        return self.variant("dup.edgetl", {"manifest.json": edit(text).encode()})


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
    "state-model-of-another-width": (StateError, _state(lambda c: c.sql("UPDATE models SET feature_dim = feature_dim + 1"))),
    "state-damaged-image-policy": (StateError, _state(lambda c: c.sql("UPDATE meta SET value = 'thumbnail:big' WHERE key = 'image_policy'"))),
    "state-garbage-bytes": (StateError, _state(lambda c: _file(c, "g.sqlite", b"not sqlite" * 500))),
    "state-damaged-pages": (StateError, _state(lambda c: _file(c, "p.sqlite", c.state.read_bytes()[:4096] + b"\xa5" * (len(c.state.read_bytes()) - 4096)))),
    "state-foreign-sqlite": (StateError, _state(_foreign_db)),
    "state-schema-version-99": (StateError, _state(lambda c: c.sql("UPDATE meta SET value = '99' WHERE key = 'schema_version'"))),
    "state-truncated-feature": (StateError, _state(lambda c: c.sql("UPDATE features SET vec = substr(vec, 1, 8)"))),
    "state-invalid-utf8-label": (StateError, _state(lambda c: c.sql("UPDATE samples SET label = CAST(x'ff80' AS TEXT)"))),
    "state-damaged-schema-text": (StateError, _state(lambda c: c.sql("PRAGMA writable_schema=ON", "UPDATE sqlite_master SET sql = replace(sql, 'image TEXT NOT NULL', 'imagx TEXT NOT NULL') WHERE name = 'samples'"))),
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


# ---------------------------------------------------------------------------------------------- round 2 (issue 14)
# What an outside attack found: 46 of 214 hostile inputs ended in a raw exception, a CLI traceback, gigabytes of
# memory or silently changed data. Each now ends in its typed error; the builders live in _hostile.py.

_Case = tuple[type[Exception] | int, Callable[[Ctx], Callable[[], object]]]
MiB = H.MiB
STORED = {"golden.npz": zipfile.ZIP_STORED}  # the outer zip entry stored: only the npz reader can refuse what is inside


def _bomb(member: str, method: int, size: int = 4 * MiB) -> Callable[[Ctx], Callable[[], object]]:
    return _open(lambda c: H.bomb_bundle(c.bundle, c.dir / "bomb.edgetl", member, method, size))


def _golden(
    data: bytes | Callable[[], bytes], outer: dict[str, int] | None = STORED
) -> Callable[[Ctx], Callable[[], object]]:
    return _open(lambda c: c.consistent("g.edgetl", methods=outer, golden__npz=data() if callable(data) else data))


def _golden_entries(**override: bytes | None) -> Callable[[Ctx], Callable[[], object]]:
    return _golden(lambda: H.npz(H.golden_entries(**override)))


def _head(
    entries: dict[str, bytes], labels: list[str] | None = None, method: int = zipfile.ZIP_STORED
) -> Callable[[Ctx], Callable[[], object]]:
    """A bundle shipping a hostile head.npz; the act reads it the way a caller does (Bundle.head_arrays)."""

    def prepare(c: Ctx) -> Callable[[], object]:
        def edit(doc: dict[str, Any]) -> None:
            doc["head_labels"] = ["a", "b"] if labels is None else labels

        outer = {"head.npz": zipfile.ZIP_STORED}
        bad = c.consistent("h.edgetl", edit, outer, head__npz=H.npz(entries, method))
        return lambda: Bundle.open(bad).head_arrays()

    return prepare


def _head_entries(**override: bytes | None) -> dict[str, bytes]:
    entries: dict[str, bytes | None] = {
        "coef.npy": H.npy((2, 16)),
        "intercept.npy": H.npy((2,)),
        "classes.npy": H.npy((2,), "<U1", b"a\0\0\0b\0\0\0"),
        "kind.npy": H.npy((), "<U6", "linear".encode("utf-32-le")),
    }
    entries.update({k.replace("__", "."): v for k, v in override.items()})
    return {k: v for k, v in entries.items() if v is not None}


def _model(edit: Callable[[dict[str, Any]], object] | None = None, **kw: Any) -> Callable[[Ctx], Callable[[], object]]:
    return _open(lambda c: c.consistent("m.edgetl", edit, backbone__fp32__onnx=H.onnx_model(**kw)))


def _feature_dim(dim: int) -> Callable[[dict[str, Any]], object]:
    return lambda doc: doc["backbone"].update(feature_dim=dim)


def _external(where: str, location: str = "secret.key", **kw: Any) -> Callable[[Ctx], Callable[[], object]]:
    def path_of(c: Ctx) -> Path:
        (c.dir / "secret.key").write_bytes(np.full(48, 7, np.float32).tobytes())  # what the model would read
        return c.consistent("x.edgetl", backbone__fp32__onnx=H.external_model(where, location, **kw))

    return _open(path_of)


def _raw_onnx(data: bytes | Callable[[], bytes]) -> Callable[[Ctx], Callable[[], object]]:
    return _open(lambda c: c.consistent("r.edgetl", backbone__fp32__onnx=data() if callable(data) else data))


def _encrypted(data: bytes) -> bytes:
    """Set the "encrypted" flag bit of every entry, in the local and the central headers."""
    out = bytearray(data)
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = out.find(signature)
        while at >= 0:
            out[at + flags_at] |= 0x01
            at = out.find(signature, at + 4)
    return bytes(out)


def _spec(**fields: Any) -> Callable[[Ctx], Callable[[], object]]:
    return _open(lambda c: c.variant("p.edgetl", manifest=lambda m: m["preprocess"].update(fields)))


def _dup(edit: Callable[[str], str]) -> Callable[[Ctx], Callable[[], object]]:
    return _open(lambda c: c.manifest_text(edit))


def _remove(**kw: Any) -> Callable[[Ctx], Callable[[], object]]:
    return lambda c: c.with_learner(lambda learner: learner.remove(**kw))


def _threads(value: Any) -> Callable[[Ctx], Callable[[], object]]:
    return lambda c: lambda: c.load(threads=value).close()


def _image_file(name: str, write: Callable[[Path], object]) -> Callable[[Ctx], Callable[[], object]]:
    def prepare(c: Ctx) -> Callable[[], object]:
        write(c.dir / name)
        return c.with_learner(lambda learner: learner.add([c.dir / name], "x"))

    return prepare


def _pillow(fmt: str, mode: str = "RGB", **kw: Any) -> Callable[[Path], object]:
    def write(path: Path) -> None:
        from PIL import Image

        Image.new(mode, (8, 8)).save(path, format=fmt, **kw)

    return write


def _text(content: bytes) -> Callable[[Path], object]:
    return lambda path: path.write_bytes(content)


EPS = H.EPS


def _png_prefix(path: Path) -> None:
    _pillow("PNG")(path)
    path.write_bytes(path.read_bytes()[:40])


def _bad_deflate(c: Ctx) -> Path:
    """golden.npz with bytes of its deflate stream flipped (size and CRC as declared)."""
    path = Path(shutil.copy(c.bundle, c.dir / "zl.edgetl"))
    data = bytearray(path.read_bytes())
    at = data.find(b"golden.npz") + len(b"golden.npz") + 8  # a few bytes into the member's compressed data
    data[at : at + 4] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    return path


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` pixels (no pixel data): a decompression bomb's claim."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _cli_add(label: str) -> Callable[[Ctx], Callable[[], object]]:
    def prepare(c: Ctx) -> Callable[[], object]:
        from PIL import Image

        (c.dir / "imgs").mkdir()
        Image.fromarray(class_images(COLORS["blue"], 1, 5)[0]).save(c.dir / "imgs" / "a.png")
        argv = ["--bundle", str(c.bundle), "--state", str(c.state), "add", str(c.dir / "imgs"), "--label", label]
        return lambda: main(argv)

    return prepare


def _schema(*statements: str) -> Callable[[Ctx], Callable[[], object]]:
    return _state(
        lambda c: (
            c.sql("PRAGMA writable_schema=ON", *statements)
            if "sqlite_master" in " ".join(statements)
            else c.sql(*statements)
        )
    )


def _rebuilt(table: str, create: str) -> Callable[[Ctx], Callable[[], object]]:
    """The state with ``table`` rebuilt from ``create`` (same rows, another definition) and its indexes made
    again as the schema has them, so that the table's definition is the one thing the schema check can see."""
    indexes = [s for s in statements(SCHEMA) if s.strip().startswith("CREATE INDEX") and f" ON {table}(" in s]
    return _schema(
        "PRAGMA foreign_keys=OFF", f"ALTER TABLE {table} RENAME TO old_{table}", create,
        f"INSERT INTO {table} SELECT * FROM old_{table}", f"DROP TABLE old_{table}", *indexes,
    )  # fmt: skip


class _Lock:
    """Another connection holding the state's write lock while the act runs (busy timeout shortened to 0.2 s)."""

    def __init__(self, act: Callable[[Ctx], Callable[[], object]], new_file: bool = False) -> None:
        self.act, self.new_file = act, new_file

    def __call__(self, c: Ctx) -> Callable[[], object]:
        from edgetl_runtime.state import store as cache

        path = c.dir / "new.sqlite" if self.new_file else c.state
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        c.cleanup.append(holder.close)  # rolls back after the snapshot comparison: the holder's own files stay
        inner = self.act(c) if not self.new_file else (lambda: c.load(state=path).close())

        def act() -> object:
            saved, cache.BUSY_TIMEOUT_S = cache.BUSY_TIMEOUT_S, 0.2
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # "features are not cached": the lock
                    return inner()
            finally:
                cache.BUSY_TIMEOUT_S = saved

        return act


def _disk_full(c: Ctx) -> Callable[[], object]:
    def act() -> object:
        with c.load() as learner, warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            db = learner.store.connection.db
            db.execute(f"PRAGMA max_page_count={db.execute('PRAGMA page_count').fetchone()[0]}")
            rng = np.random.default_rng(3)
            return learner.add([rng.integers(0, 256, (12, 14, 3), dtype=np.uint8) for _ in range(200)], "full")

    return act


_LABELS: dict[str, Any] = {
    "lone-surrogate": "\udcff", "nul-inside": "a\x00", "nul-only": "\x00", "newline": "a\nb", "tab": "a\tb",
    "escape": "\x1b[31mred", "del": "a\x7f", "c1-nel": "a\x85", "carriage-return": "cat\r",
    "too-long": "x" * 257, "int": 3, "float-nan": float("nan"), "float": 2.5, "bool": True,
    "bytes-in-list": b"cat", "none-in-list": None, "nested-list": ["a"], "dict": {"a": 1},
    "numpy-int": np.int64(3), "numpy-bytes": np.bytes_(b"cat"),
}  # fmt: skip

ROUND2: dict[str, _Case] = {
    # --- claims of the threat model that had no case of their own --------------------------------------------------
    "bundle-backslash-name": (BundleError, _open(lambda c: c.variant("bs.edgetl", extra={"..\\..\\evil.dll": b"x"}))),
    "bundle-drive-letter-name": (BundleError, _open(lambda c: c.variant("dl.edgetl", extra={"C:/evil.dll": b"x"}))),
    "bundle-encrypted-flag": (BundleError, _open(lambda c: _file(c, "enc.edgetl", _encrypted(c.bundle.read_bytes())))),
    "bundle-bad-crc": (BundleError, _open(lambda c: H.relabel(Path(shutil.copy(c.bundle, c.dir / "crc.edgetl")), "golden.npz", crc=0))),
    "bundle-bad-deflate-stream": (BundleError, _open(_bad_deflate)),
    "bundle-manifest-negative-size": (BundleError, _open(lambda c: c.variant("ns.edgetl", manifest=lambda m: m["members"]["golden.npz"].update(size=-1)))),
    "image-file-decompression-bomb-png": (InputError, _image_file("bomb.png", _text(_png_header(30000, 30000)))),
    # --- 1. compression bombs before the hash check: only stored/deflate, every read bounded ---------------------
    **{f"bundle-{m}-{method}-member": (BundleError, _bomb(m, code))
       for m in ("manifest.json", "golden.npz", "backbone.fp32.onnx") for method, code in H.METHODS.items()},
    "bundle-bzip2-bomb-2gib-manifest": (BundleError, _bomb("manifest.json", zipfile.ZIP_BZIP2, 2**31)),
    "bundle-deflate-bomb-at-declared-size": (BundleError, _bomb("golden.npz", zipfile.ZIP_DEFLATED, 16 * MiB)),
    "bundle-deflated-model": (BundleError, _open(lambda c: c.consistent("d.edgetl", methods={"backbone.fp32.onnx": zipfile.ZIP_DEFLATED}))),
    "bundle-deflate-ratio-over-cap": (BundleError, _golden(lambda: H.npz(H.golden_entries(inputs__npy=H.npy((300, 3, 16, 16)))), outer=None)),
    # --- 2. npz inside the bundle: headers checked against the manifest before anything is allocated ---------------
    "bundle-golden-deflate-bomb-entry": (BundleError, _golden(lambda: H.deflate_npz_bomb(16 * MiB))),
    "bundle-golden-compressed-entries": (BundleError, _golden(lambda: H.npz(H.golden_entries(), zipfile.ZIP_DEFLATED))),
    "bundle-golden-bzip2-entries": (BundleError, _golden(lambda: H.npz(H.golden_entries(), zipfile.ZIP_BZIP2))),
    "bundle-golden-2pow40-rows": (BundleError, _golden_entries(inputs__npy=H.npy((2**40, 3, 16, 16), data=bytes(64)))),
    "bundle-golden-2pow62-bytes": (BundleError, _golden_entries(features__npy=H.npy((2**31, 2**31), data=bytes(64)))),
    "bundle-golden-negative-dim": (BundleError, _golden_entries(inputs__npy=H.npy((-1, 3, 16, 16), data=b""))),
    "bundle-golden-shape-is-list": (BundleError, _golden_entries(inputs__npy=H.npy((), header={"descr": "<f4", "fortran_order": False, "shape": [3, 3, 16, 16]}, data=b""))),
    "bundle-golden-header-not-dict": (BundleError, _golden_entries(inputs__npy=H.npy((), header="__import__('os')", data=b""))),
    "bundle-golden-bad-magic": (BundleError, _golden_entries(inputs__npy=b"\x93NUMPZ" + bytes(100))),
    "bundle-golden-npy-version-3": (BundleError, _golden_entries(inputs__npy=H.npy((1,), version=(3, 0), data=b""))),
    "bundle-golden-huge-header": (BundleError, _golden_entries(inputs__npy=H.npy((), header={"descr": "<f4", "fortran_order": False, "shape": (3, 3, 16, 16), "x": "y" * 20000}))),
    "bundle-golden-object-dtype": (BundleError, _golden_entries(features__npy=H.npy((3, 16), "|O", data=bytes(48)))),
    "bundle-golden-structured-dtype": (BundleError, _golden_entries(features__npy=H.npy((), header={"descr": [("a", "<f4")], "fortran_order": False, "shape": (3, 16)}, data=bytes(192)))),
    "bundle-golden-bytes-dtype": (BundleError, _golden_entries(features__npy=H.npy((3, 16), "|S4"))),
    "bundle-golden-int-inputs": (BundleError, _golden_entries(inputs__npy=H.npy((3, 3, 16, 16), "<i4"))),
    "bundle-golden-complex-features": (BundleError, _golden_entries(features__npy=H.npy((3, 16), "<c8"))),
    "bundle-golden-empty-dtype": (BundleError, _golden_entries(features__npy=H.npy((3, 16), "<U0", data=b""))),
    "bundle-golden-extra-array": (BundleError, _golden_entries(payload__npy=H.npy((4,)))),
    "bundle-golden-not-npy-entry": (BundleError, _golden_entries(run__sh=b"rm -rf /")),
    "bundle-golden-missing-features": (BundleError, _golden_entries(features__npy=None)),
    "bundle-golden-no-entries": (BundleError, _golden(lambda: H.npz({}))),
    "bundle-golden-zero-rows": (BundleError, _golden(lambda: H.npz(H.golden_entries(rows=0)))),
    "bundle-golden-65-rows": (BundleError, _golden(lambda: H.npz(H.golden_entries(rows=65)))),
    "bundle-golden-rows-disagree": (BundleError, _golden_entries(features__npy=H.npy((2, 16)))),
    "bundle-golden-wrong-height": (BundleError, _golden(lambda: H.npz(H.golden_entries(size=8)))),
    "bundle-golden-wrong-dim": (BundleError, _golden(lambda: H.npz(H.golden_entries(dim=8)))),
    "bundle-golden-features-3d": (BundleError, _golden_entries(features__npy=H.npy((3, 16, 1)))),
    "bundle-golden-0d-inputs": (BundleError, _golden_entries(inputs__npy=H.npy(()))),
    "bundle-golden-int8-reference-wrong": (BundleError, _golden_entries(features_int8__npy=H.npy((3, 8)))),
    "bundle-golden-truncated-data": (BundleError, _golden_entries(inputs__npy=H.npy((3, 3, 16, 16))[:-100])),
    "bundle-golden-trailing-data": (BundleError, _golden_entries(inputs__npy=H.npy((3, 3, 16, 16)) + bytes(100))),
    "bundle-golden-too-many-entries": (BundleError, _golden(lambda: H.npz({**H.golden_entries(), **{f"x{i}.npy": H.npy((1,)) for i in range(70)}}))),
    "bundle-golden-encrypted-flag": (BundleError, _golden(lambda: _encrypted(H.npz(H.golden_entries())))),
    "bundle-head-2pow40-classes": (BundleError, _head(_head_entries(coef__npy=H.npy((2**40, 16), data=bytes(64))))),
    "bundle-head-compressed": (BundleError, _head(_head_entries(), method=zipfile.ZIP_DEFLATED)),
    "bundle-head-object-classes": (BundleError, _head(_head_entries(classes__npy=H.npy((2,), "|O", data=bytes(16))))),
    "bundle-head-coef-wrong-dim": (BundleError, _head(_head_entries(coef__npy=H.npy((2, 8))))),
    "bundle-head-classes-disagree-with-manifest": (BundleError, _head(_head_entries(), labels=["a", "b", "c"])),
    "bundle-head-missing-intercept": (BundleError, _head(_head_entries(intercept__npy=None))),
    "bundle-head-extra-array": (BundleError, _head(_head_entries(evil__npy=H.npy((1,))))),
    "bundle-head-kind-not-scalar": (BundleError, _head(_head_entries(kind__npy=H.npy((2,), "<U1", "ab".encode("utf-32-le"))))),
    # --- 3. ONNX external data: a bundle is self-contained ------------------------------------------------------------
    **{f"bundle-onnx-external-{where}": (BundleError, _external(where))
       for where in ("initializer", "constant", "tensors_attribute", "subgraph", "sparse", "function", "training")},
    "bundle-onnx-external-absolute-path": (BundleError, _external("initializer", "/etc/passwd")),
    "bundle-onnx-external-parent-path": (BundleError, _external("initializer", "../../secret.key")),
    "bundle-onnx-external-ort-memory-address": (BundleError, _external("initializer", "*/_ORT_MEM_ADDR_/*")),
    "bundle-onnx-external-flag-only": (BundleError, _external("initializer", entries=False)),
    "bundle-onnx-external-entries-only": (BundleError, _external("initializer", flag=False)),
    "bundle-onnx-epcontext-node": (BundleError, _raw_onnx(H.epcontext_model)),
    "bundle-onnx-nested-too-deep": (BundleError, _raw_onnx(lambda: H.nested_protobuf(150))),
    "bundle-onnx-truncated-protobuf": (BundleError, _raw_onnx(lambda: H.onnx_model()[:-7])),
    "bundle-onnx-group-wire-type": (BundleError, _raw_onnx(b"\x0b\x0c")),
    "bundle-onnx-overlong-varint": (BundleError, _raw_onnx(b"\x08" + b"\xff" * 11 + b"\x01")),
    "bundle-onnx-field-zero": (BundleError, _raw_onnx(b"\x00\x01")),
    "bundle-onnx-length-past-end": (BundleError, _raw_onnx(b"\x3a\xff\x7f" + bytes(10))),
    # --- 4. a model that disagrees with its manifest: one BackendError listing every mismatch -------------------
    "bundle-graph-output-wider-than-dim": (BackendError, _model(_feature_dim(8), dim=16)),
    "bundle-graph-output-n-8-1": (BackendError, _model(_feature_dim(8), dim=8, tail="unsqueeze", out_shape=["batch", 8, 1])),
    "bundle-graph-output-renamed": (BackendError, _model(out_name="feats")),
    "bundle-graph-input-renamed": (BackendError, _model(in_name="pixels")),
    "bundle-graph-fixed-64x64-input": (BackendError, _model(in_shape=["batch", 3, 64, 64])),
    "bundle-graph-fixed-batch-1": (BackendError, _model(in_shape=[1, 3, "h", "w"], out_shape=[1, 16])),
    "bundle-graph-one-channel-input": (BackendError, _model(in_shape=["batch", 1, "h", "w"])),
    "bundle-graph-extra-required-input": (BackendError, _model(extra_input=True)),
    "bundle-graph-float16-input": (BackendError, _model(in_type="FLOAT16")),
    "bundle-graph-int64-output": (BackendError, _model(tail="int64")),
    "bundle-graph-rank1-output": (BackendError, _model(tail="rank1", out_shape=["batch"])),
    "bundle-graph-reduces-batch-declared": (BackendError, _model(tail="reduce_batch")),
    "bundle-graph-reduces-batch-hidden": (BackendError, _model(tail="hidden_reduce")),
    "bundle-graph-transposed-output": (BackendError, _model(tail="transpose")),
    "bundle-graph-fixed-reshape-3": (BackendError, _model(tail="reshape3")),
    # --- 5. preprocessing arithmetic: the product resize_size**2 is bounded, not each factor -------------------------
    "bundle-spec-4096-crop-0.1": (BundleError, _spec(input_size=[4096, 4096], crop_pct=0.1)),
    "bundle-spec-4096-crop-0.5": (BundleError, _spec(input_size=[4096, 4096], crop_pct=0.5)),
    "bundle-spec-2048-crop-0.2": (BundleError, _spec(input_size=[2048, 2048], crop_pct=0.2)),
    "bundle-spec-8x4096-crop-0.1": (BundleError, _spec(input_size=[8, 4096], crop_pct=0.1)),
    "bundle-spec-crop-string": (BundleError, _spec(crop_pct="0.5")),
    "bundle-spec-crop-nan": (BundleError, _spec(crop_pct=float("nan"))),
    "bundle-spec-crop-zero": (BundleError, _spec(crop_pct=0)),
    "bundle-spec-crop-inf": (BundleError, _spec(crop_pct=float("inf"))),
    "bundle-spec-crop-list": (BundleError, _spec(crop_pct=[0.5])),
    "bundle-spec-three-sides": (BundleError, _spec(input_size=[16, 16, 16])),
    # --- 6. duplicate keys in manifest JSON ----------------------------------------------------------------------
    "bundle-manifest-dup-format-version": (BundleError, _dup(lambda t: '{"format_version": 2, ' + t[1:])),
    "bundle-manifest-dup-feature-dim": (BundleError, _dup(lambda t: t.replace('"backbone": {', '"backbone": {"feature_dim": 8, ', 1))),
    "bundle-manifest-dup-crop-pct": (BundleError, _dup(lambda t: t.replace('"preprocess": {', '"preprocess": {"crop_pct": 0.5, ', 1))),
    "bundle-manifest-dup-members": (BundleError, _dup(lambda t: t.replace('"members": {', '"members": {}, "members": {', 1))),
    "bundle-manifest-dup-sha256": (BundleError, _dup(lambda t: t.replace('"sha256": "', '"sha256": "' + "0" * 64 + '", "sha256": "', 1))),
    "bundle-manifest-dup-precisions": (BundleError, _dup(lambda t: '{"precisions": ["int8"], ' + t[1:])),
    # --- 7. image formats: raster only, by content ----------------------------------------------------------------
    "image-file-postscript-named-jpg": (InputError, _image_file("ps.jpg", _text(EPS))),
    "image-file-eps-named-png": (InputError, _image_file("ps.png", _text(b"\xc5\xd0\xd3\xc6" + bytes(28) + EPS))),
    "image-file-pdf-named-jpg": (InputError, _image_file("doc.jpg", _text(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"))),
    "image-file-svg-named-png": (InputError, _image_file("v.png", _text(b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>'))),
    "image-file-html-named-webp": (InputError, _image_file("page.webp", _text(b"<html><script>alert(1)</script></html>"))),
    "image-file-ico": (InputError, _image_file("i.png", _pillow("ICO"))),
    "image-file-tga": (InputError, _image_file("t.jpg", _pillow("TGA"))),
    "image-file-ppm": (InputError, _image_file("p.png", _pillow("PPM"))),
    "image-file-pcx": (InputError, _image_file("x.bmp", _pillow("PCX"))),
    "image-file-sgi": (InputError, _image_file("s.gif", _pillow("SGI"))),
    "image-file-xbm": (InputError, _image_file("b.tif", _pillow("XBM", "1"))),
    "image-file-float-tiff": (InputError, _image_file("f.tif", _pillow("TIFF", "F"))),
    "image-file-truncated-png": (InputError, _image_file("tr.png", _png_prefix)),
    # --- 10. labels: one rule, refused rather than converted ------------------------------------------------------
    **{f"label-{name}": (InputError, _add([U8], [value])) for name, value in _LABELS.items()},
    "label-bytes-for-all": (InputError, _add([U8], b"cat")),
    "label-int-for-all": (InputError, _add([U8], 7)),
    "label-set": (InputError, _add([U8], {"a"})),
    "label-2d-array": (InputError, _add([U8], np.array([["a"]]))),
    "label-int-array": (InputError, _add([U8, U8], np.array([1, 2]))),
    "label-object-array-with-none": (InputError, _add([U8, U8], np.array(["a", None], dtype=object))),
    "label-generator": (InputError, _add([U8], (v for v in ["a"]))),
    "remove-label-lone-surrogate": (InputError, _remove(label="\udcff")),
    "remove-label-nul": (InputError, _remove(label="red\x00")),
    "remove-label-bytes": (InputError, _remove(label=b"red")),
    "remove-label-int": (InputError, _remove(label=3)),
    "remove-label-too-long": (InputError, _remove(label="r" * 300)),
    # --- 11. API arguments at the boundary -----------------------------------------------------------------------
    "remove-ids-2pow70": (InputError, _remove(ids=[2**70])),
    "remove-ids-negative": (InputError, _remove(ids=[-1])),
    "remove-ids-zero": (InputError, _remove(ids=[0])),
    "remove-ids-bool": (InputError, _remove(ids=[True])),
    "remove-ids-float": (InputError, _remove(ids=[1.0])),
    "remove-ids-str-element": (InputError, _remove(ids=["1"])),
    "remove-ids-bare-int": (InputError, _remove(ids=5)),
    "remove-ids-str": (InputError, _remove(ids="12")),
    "remove-ids-2d-array": (InputError, _remove(ids=np.array([[1]]))),
    "remove-ids-float-array": (InputError, _remove(ids=np.array([1.5]))),
    "remove-ids-uint64-array-2pow63": (InputError, _remove(ids=np.array([2**63], dtype=np.uint64))),
    "remove-ids-array-unknown": (InputError, _remove(ids=np.array([10**6]))),
    "remove-neither-label-nor-ids": (InputError, _remove()),
    "option-threads-10pow20": (InputError, _threads(10**20)),
    "option-threads-negative": (InputError, _threads(-1)),
    "option-threads-zero": (InputError, _threads(0)),
    "option-threads-float": (InputError, _threads(2.5)),
    "option-threads-str": (InputError, _threads("4")),
    "option-threads-bool": (InputError, _threads(True)),
    "option-threads-1025": (InputError, _threads(1025)),
    "option-threads-numpy-float": (InputError, _threads(np.float64(2))),
    # --- 8, 9. state: typed write errors with truthful fixes; the exact schema, nothing in the file runs -----------
    "state-locked-add": (StateLockedError, _Lock(_add([U8], "x"))),
    "state-locked-remove": (StateLockedError, _Lock(_remove(label="red"))),
    "state-locked-while-created": (StateLockedError, _Lock(_add([U8]), new_file=True)),
    "state-disk-full-add": (StateFullError, _disk_full),
    "state-trigger-deletes-samples": (StateError, _schema("CREATE TRIGGER eat AFTER INSERT ON samples BEGIN DELETE FROM samples WHERE id = NEW.id; END")),
    "state-trigger-on-features": (StateError, _schema("CREATE TRIGGER leak AFTER INSERT ON features BEGIN UPDATE meta SET value = NEW.image WHERE key = 'x'; END")),
    "state-trigger-before-delete": (StateError, _schema("CREATE TRIGGER keep BEFORE DELETE ON samples BEGIN SELECT RAISE(IGNORE); END")),
    "state-view": (StateError, _schema("CREATE VIEW v AS SELECT * FROM samples")),
    "state-extra-table": (StateError, _schema("CREATE TABLE extra (x)")),
    "state-extra-index": (StateError, _schema("CREATE INDEX extra_idx ON features(vec)")),
    "state-dropped-index": (StateError, _schema("DROP INDEX samples_label")),
    "state-samples-without-not-null": (StateError, _rebuilt("samples", "CREATE TABLE samples (id INTEGER PRIMARY KEY AUTOINCREMENT, label TEXT, image TEXT REFERENCES images(hash) ON DELETE RESTRICT)")),
    "state-samples-without-foreign-key": (StateError, _rebuilt("samples", "CREATE TABLE samples (id INTEGER PRIMARY KEY AUTOINCREMENT, label TEXT NOT NULL, image TEXT NOT NULL)")),
    "state-meta-without-primary-key": (StateError, _rebuilt("meta", "CREATE TABLE meta (key TEXT, value TEXT NOT NULL)")),
    "state-features-with-check": (StateError, _rebuilt("features", "CREATE TABLE features (image TEXT NOT NULL, model TEXT NOT NULL REFERENCES models(key) ON DELETE CASCADE, vec BLOB NOT NULL CHECK (length(vec) > 0), PRIMARY KEY (image, model))")),
    "state-features-generated-column": (StateError, _schema("ALTER TABLE features ADD COLUMN g TEXT GENERATED ALWAYS AS (upper(image)) VIRTUAL")),
    "state-schema-text-with-default": (StateError, _schema("UPDATE sqlite_master SET sql = replace(sql, 'value TEXT NOT NULL', 'value TEXT NOT NULL DEFAULT (random())') WHERE name = 'meta'")),
    "state-analyze-stats": (StateError, _schema("ANALYZE")),
    # --- CLI: one line on stderr, exit 2, never a traceback ----------------------------------------------------------
    "cli-add-label-lone-surrogate": (2, _cli_add("\udcff")),
    "cli-add-label-nul": (2, _cli_add("a\x00b")),
    "cli-add-label-newline": (2, _cli_add("a\nb")),
    "cli-add-label-too-long": (2, _cli_add("x" * 300)),
    "cli-remove-label-surrogate": (2, _cli("remove", "--label", "\udcfe")),
    "cli-remove-label-nul": (2, _cli("remove", "--label", "red\x00")),
    "cli-threads-10pow20": (2, _cli("--threads", str(10**20), "info")),
    "cli-threads-1025": (2, _cli("--threads", "1025", "info")),
    "cli-threads-5000-digits": (2, _cli("--threads", "9" * 5000, "info")),
    "cli-threads-float": (2, _cli("--threads", "2.5", "info")),
    "cli-bzip2-bomb-bundle": (2, _cli_on(lambda c: H.bomb_bundle(c.bundle, c.dir / "b.edgetl", "manifest.json", zipfile.ZIP_BZIP2, 2**31))),
    "cli-external-data-bundle": (2, _cli_on(lambda c: c.consistent("x.edgetl", backbone__fp32__onnx=H.external_model()))),
    "cli-graph-mismatch-bundle": (2, _cli_on(lambda c: c.consistent("m.edgetl", _feature_dim(8)))),
    "cli-duplicate-key-manifest": (2, _cli_on(lambda c: c.manifest_text(lambda t: '{"format_version": 1, ' + t[1:]))),
    "cli-huge-resize-bundle": (2, _cli_on(lambda c: c.variant("p.edgetl", manifest=lambda m: m["preprocess"].update(input_size=[4096, 4096], crop_pct=0.1)))),
    "cli-trigger-in-state": (2, _cli_on(state_of=lambda c: (c.sql("CREATE TRIGGER t AFTER INSERT ON samples BEGIN DELETE FROM samples; END"), c.state)[1])),
    "cli-predict-postscript": (2, lambda c: (c.dir.joinpath("ps.jpg").write_bytes(EPS), _cli("predict", "{dir}/ps.jpg")(c))[1]),
}  # fmt: skip
CASES.update(ROUND2)


@pytest.fixture(scope="module")
def template(reliability_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("template") / "state.sqlite"
    with Learner.load(reliability_bundle, state, backend="onnxruntime", head="ncm") as learner:
        learner.add(class_images(COLORS["red"], 2, 0), "red")
        learner.add(class_images(COLORS["green"], 2, 1), "green")
    return state


def test_corpus_is_large_and_covers_every_kind() -> None:
    kinds = {name.split("-")[0] for name in CASES}
    assert len(CASES) >= 250 and kinds == {"bundle", "image", "label", "remove", "predict", "state", "option", "cli"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_and_changes_nothing(
    case: str, reliability_bundle: Path, template: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if case.startswith("image-") and "file" in case:
        pytest.importorskip("PIL")
    expected, prepare = CASES[case]
    ctx = Ctx(tmp_path, Path(shutil.copy(reliability_bundle, tmp_path / "tiny.edgetl")), tmp_path / "state.sqlite")
    shutil.copy(template, ctx.state)
    try:
        _refused_without_change(ctx, prepare, expected, capsys)
    finally:
        for undo in ctx.cleanup:
            undo()


def _refused_without_change(
    ctx: Ctx, prepare: Callable[[Ctx], Callable[[], object]], expected: type[Exception] | int, capsys: Any
) -> None:
    act = prepare(ctx)
    before, rows = snapshot(ctx.dir), sample_rows(ctx.state)
    capsys.readouterr()
    if isinstance(expected, int):
        try:
            code = act()
            one_line = True  # our own error: exactly one line
        except SystemExit as exc:  # argparse refuses bad arguments itself, also with exit code 2 (after its usage)
            code, one_line = exc.code, False
        err = capsys.readouterr().err
        assert code == expected and "error" in err and len(err.strip()) > 20, (code, err)
        assert "Traceback" not in err and (not one_line or len(err.strip().splitlines()) == 1), err
    else:
        with pytest.raises(expected) as info:
            act()
        assert type(info.value) is expected, f"{type(info.value).__name__} is not exactly {expected.__name__}"
        assert len(str(info.value)) > 20
    assert snapshot(ctx.dir) == before, "the refused call changed files on disk"
    assert sample_rows(ctx.state) == rows, "the refused call changed the enrolled samples"
