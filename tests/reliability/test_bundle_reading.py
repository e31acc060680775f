"""Reading a bundle's members safely: zip compression methods, the npz reader (headers before arrays) and the
scan that refuses ONNX models whose tensors point at external files.

Each cause has its control where one is possible: the attack is real (zipfile inflates bzip2 without a bound,
onnxruntime reads the file a tensor names), and the reader refuses it while valid members keep working.
"""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgetl_runtime.bundle.npz import read_npz
from edgetl_runtime.bundle.onnx_scan import MAX_DEPTH, external_references
from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.errors import BundleError

from . import _hostile as H
from ._support import load_learner

pytestmark = pytest.mark.runtime


# ---------------------------------------------------------------------------------------------- compression


def test_zipfile_inflates_bzip2_without_a_bound(tmp_path: Path, reliability_bundle: Path) -> None:
    """Control for cause 1: zipfile asked for a few bytes of a bzip2 member inflates far more (here 64 MiB)."""
    bomb = H.bomb_bundle(reliability_bundle, tmp_path / "b.edgetl", "golden.npz", zipfile.ZIP_BZIP2, 64 * H.MiB)
    assert bomb.stat().st_size < 16_000
    with zipfile.ZipFile(bomb) as archive, archive.open("golden.npz") as fh:
        decompressor = fh._decompressor  # type: ignore[attr-defined]
        with pytest.raises(zipfile.BadZipFile, match="CRC"):  # only after inflating all of it
            fh.read(10)
        assert decompressor.eof  # the whole 64 MiB stream went through one decompress call for 10 bytes
    with pytest.raises(BundleError, match="compression method 12"):
        Bundle.open(bomb)


# ---------------------------------------------------------------------------------------------- npz members


def test_the_npz_reader_round_trips_what_numpy_writes() -> None:
    arrays = {
        "c": np.arange(12, dtype=np.float32).reshape(3, 4),
        "f": np.asfortranarray(np.arange(6, dtype=">f8").reshape(2, 3)),
        "u": np.array(["a", "bé"]),
        "e": np.zeros((0, 5), np.int16),
        "s": np.array(7, np.int64),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    got = read_npz(buffer.getvalue(), "t.npz", lambda headers: [])
    assert set(got) == set(arrays)
    for key, value in arrays.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape and np.array_equal(got[key], value)
        assert got[key].flags.writeable


def test_the_npz_reader_checks_headers_before_reading_any_array() -> None:
    seen = []
    data = H.npz(H.golden_entries(inputs__npy=H.npy((2**40, 3, 16, 16), data=bytes(64))))
    with pytest.raises(BundleError, match="declares 3377699720527872 bytes"):
        read_npz(data, "golden.npz", lambda headers: seen.append(headers) or [])
    assert seen == []  # byte counts are checked even before the manifest check sees the headers
    with pytest.raises(BundleError, match="must be 7"):
        read_npz(H.npz(H.golden_entries()), "golden.npz", lambda headers: ["rows must be 7"])


def test_the_writers_head_passes_the_header_checks(reliability_bundle: Path, tmp_path: Path) -> None:
    """A head.npz as edgetl.export._head_npz writes it (through the writer's npz_bytes) reads back unchanged."""
    from edgetl_exporters.bundle_writer import npz_bytes, write_bundle

    original = Bundle.open(reliability_bundle)
    arrays = {
        "kind": np.array("linear"),
        "coef": np.ones((3, 16), np.float32),
        "intercept": np.zeros(3, np.float32),
        "classes": np.array(["dark", "mid", "bright"], dtype=str),
    }
    manifest = original.manifest.__class__(**{**vars(original.manifest), "head_labels": ("dark", "mid", "bright")})
    bundle = write_bundle(tmp_path / "h.edgetl", manifest, {**original.members, "head.npz": npz_bytes(arrays)})
    head = bundle.head_arrays()
    assert head is not None and all(np.array_equal(head[k], v) for k, v in arrays.items())


# ---------------------------------------------------------------------------------------------- external data


def test_external_data_is_a_live_attack_and_is_refused(
    reliability_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control: onnxruntime, given the model's bytes, reads 'secret.key' from the current directory. The bundle
    carrying the same model is refused, and nothing reads the file."""
    ort = pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    model = H.external_model("initializer", "secret.key")
    images = np.ones((1, 3, 4, 4), np.float32)
    Path("secret.key").write_bytes(np.full((16, 3, 1, 1), 7, np.float32).tobytes())
    first = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"images": images})[0]
    Path("secret.key").write_bytes(np.full((16, 3, 1, 1), -7, np.float32).tobytes())
    second = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"images": images})[0]
    assert not np.allclose(first, second)  # the features are computed from the file's bytes
    bad = H.resign(reliability_bundle, tmp_path / "x.edgetl", backbone__fp32__onnx=model)
    opened = []
    real_open = open

    def spy_open(file: object, *args: object, **kwargs: object) -> object:
        opened.append(str(file))
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", spy_open)
    with pytest.raises(BundleError, match=r"location 'secret\.key'"):
        load_learner(bad)
    assert not any("secret.key" in f for f in opened)


@pytest.mark.parametrize(
    "where", ["initializer", "constant", "tensors_attribute", "subgraph", "sparse", "function", "training"]
)
def test_the_scan_finds_external_data_wherever_a_tensor_can_sit(where: str) -> None:
    found = external_references(H.external_model(where))
    assert len(found) >= 1 and all("secret.key" in f for f in found), found


def test_the_scan_passes_self_contained_models(reliability_bundle: Path) -> None:
    onnx = pytest.importorskip("onnx")
    assert (
        external_references(
            Bundle.open(reliability_bundle).model_bytes(Bundle.open(reliability_bundle).resolve_precision("fp32"))
        )
        == []
    )
    model = onnx.load_from_string(H.external_model("subgraph"))  # the same places, the data inline
    for attribute in model.graph.node[-1].attribute:
        for tensor in attribute.g.initializer:
            tensor.ClearField("external_data")
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = np.ones(48, np.float32).tobytes()
    assert external_references(model.SerializeToString()) == []


def test_the_scan_is_linear_and_bounded() -> None:
    """10,000 initialisers scan in well under a second; nesting is capped at protobuf's own depth."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(np.full(4, i, np.float32), f"t{i}") for i in range(10_000)]
    graph = helper.make_graph([], "many", [], [], initializer=inits)
    data = helper.make_model(graph).SerializeToString()
    start = time.perf_counter()
    assert external_references(data) == []
    assert time.perf_counter() - start < 1.0
    assert external_references(H.nested_protobuf(MAX_DEPTH // 3 - 1)) == []
    with pytest.raises(BundleError, match="nest deeper"):
        external_references(H.nested_protobuf(MAX_DEPTH))
    assert onnx is not None
