"""Nothing gets in: no pickle anywhere in the source, bundle members are never executed, hashes come first."""

from __future__ import annotations

import ast
import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgetl_runtime.bundle.reader import MAX_MANIFEST_BYTES, Bundle
from edgetl_runtime.errors import BundleError, BundleIntegrityError
from edgetl_runtime.learner import Learner

from ._support import REPO

pytestmark = pytest.mark.runtime

SOURCES = [REPO / "edgetl", REPO / "exporters" / "src", REPO / "runtime" / "src"]
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}


def unsafe_calls(path: Path) -> list[str]:
    """Deserialisation that can run code: pickle-like imports, allow_pickle=True, torch.load without
    weights_only=True, torch.jit.load, and the eval/exec builtins. AST-based, so docstrings do not count."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        where = f"{path}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{where} imports {n}" for n in names if n.split(".")[0] in UNSAFE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        call = ast.unparse(node.func)
        keywords = {k.arg: k.value for k in node.keywords}
        flag = keywords.get("allow_pickle")
        if isinstance(flag, ast.Constant) and flag.value is True:
            found.append(f"{where} {call}(allow_pickle=True)")
        weights_only = keywords.get("weights_only")
        if call == "torch.load" and not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
            found.append(f"{where} torch.load without weights_only=True")
        if call in {"torch.jit.load", "eval", "exec"}:
            found.append(f"{where} {call}()")
    return found


def test_no_pickle_or_code_loading_in_the_source_tree() -> None:
    files = [p for root in SOURCES for p in sorted(root.rglob("*.py"))]
    assert len(files) > 30, "the scan found suspiciously few files"
    found = [hit for p in files for hit in unsafe_calls(p)]
    assert not found, "unsafe deserialisation:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "import pickle",
        "from joblib import load",
        "np.load(f, allow_pickle=True)",
        "torch.load(path)",
        "torch.load(path, weights_only=False)",
        "torch.jit.load(path)",
        "eval(text)",
    ],
)
def test_the_scan_catches_planted_unsafe_code(tmp_path: Path, source: str) -> None:
    fake = tmp_path / "planted.py"
    fake.write_text(f'"""pickle in a docstring is fine."""\n{source}\n')
    assert len(unsafe_calls(fake)) == 1


def test_safe_spellings_pass(tmp_path: Path) -> None:
    ok = tmp_path / "ok.py"
    ok.write_text("np.load(f, allow_pickle=False)\ntorch.load(p, map_location='cpu', weights_only=True)\nm.eval()\n")
    assert unsafe_calls(ok) == []


class _Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _object_npz(marker: Path, **plain: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, evil=np.array([_Payload(marker)], dtype=object), **plain)
    return buffer.getvalue()


def _signed_bundle(src: Path, dst: Path, **members: bytes) -> Path:
    """A hash-consistent bundle: what an attacker who can rewrite the whole file produces."""
    from edgetl_exporters.bundle_writer import write_bundle

    original = Bundle.open(src)
    write_bundle(dst, original.manifest, {**original.members, **members})
    return dst


def test_the_payload_is_live_when_pickle_is_allowed(tmp_path: Path) -> None:
    """Control: the same bytes DO run code through np.load(allow_pickle=True), so the refusals below mean something."""
    marker = tmp_path / "pwned"
    with np.load(io.BytesIO(_object_npz(marker)), allow_pickle=True) as npz:
        npz["evil"]
    assert marker.exists()


def test_object_array_in_head_is_refused_not_executed(reliability_bundle: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bundle = Bundle.open(
        _signed_bundle(reliability_bundle, tmp_path / "evil.edgetl", **{"head.npz": _object_npz(marker)})
    )
    with pytest.raises(BundleError, match=r"head\.npz"):
        bundle.head_arrays()
    assert not marker.exists()


def test_object_array_in_golden_is_refused_not_executed(reliability_bundle: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    golden = Bundle.open(reliability_bundle).golden()
    evil = _signed_bundle(reliability_bundle, tmp_path / "evil.edgetl", **{"golden.npz": _object_npz(marker, **golden)})
    with pytest.raises(BundleError, match=r"golden\.npz"):
        Learner.load(evil, backend="onnxruntime")
    assert not marker.exists()


def test_hashes_are_checked_before_any_member_is_parsed(
    reliability_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tampered golden.npz that is a perfectly valid npz in a valid zip: refused before any parser sees a member
    (the npz reader, the ONNX external-data scan, onnxruntime), and np.load is never used at all."""
    ort = pytest.importorskip("onnxruntime")
    import edgetl_runtime.bundle.reader as bundle_module

    calls: list[str] = []

    def spy(name: str, real: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(np, "load", spy("np.load", np.load))
    monkeypatch.setattr(bundle_module, "read_npz", spy("read_npz", bundle_module.read_npz))
    monkeypatch.setattr(bundle_module, "check_self_contained", spy("scan", bundle_module.check_self_contained))
    monkeypatch.setattr(ort, "InferenceSession", spy("onnxruntime", ort.InferenceSession))

    golden = Bundle.open(reliability_bundle).golden()
    calls.clear()
    forged = io.BytesIO()
    np.savez(
        forged, inputs=golden["inputs"], features=np.asarray(golden["features"], np.float32) + 1
    )  # valid, but not what was signed
    bad = tmp_path / "forged.edgetl"
    with zipfile.ZipFile(reliability_bundle) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, forged.getvalue() if info.filename == "golden.npz" else zin.read(info))
    with pytest.raises(BundleIntegrityError, match=r"golden\.npz"):
        Learner.load(bad, backend="onnxruntime")
    assert calls == [], f"parsed before verification: {calls}"
    Learner.load(reliability_bundle, backend="onnxruntime").close()  # the spies do see a good load
    assert {"read_npz", "scan", "onnxruntime"} <= set(calls) and "np.load" not in calls, calls


def test_an_oversized_manifest_is_refused_before_parsing(reliability_bundle: Path, tmp_path: Path) -> None:
    bad = tmp_path / "big.edgetl"
    with zipfile.ZipFile(reliability_bundle) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(
                info.filename,
                data[:-1] + b" " * MAX_MANIFEST_BYTES + b"}" if info.filename == "manifest.json" else data,
            )
    with pytest.raises(BundleError, match="more than the 1048576 allowed"):
        Bundle.open(bad)
