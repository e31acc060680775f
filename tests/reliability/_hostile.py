"""Hostile inputs of the round-2 attack (issue 14): compression bombs, npz bombs, external data, lying graphs.

Shared by the bad-input corpus, the peak-memory test and ``benchmarks/stress.py``. Every builder writes
what an attacker can write: zips with lying sizes, ``.npy`` headers with any shape, ONNX models naming
files, and "hash-consistent" bundles whose manifest is re-signed over hostile members (the manifest is
not authenticated, see docs/threat-model.md).
"""

from __future__ import annotations

import base64
import bz2
import hashlib
import io
import json
import lzma
import struct
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

MiB = 1 << 20
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\nshowpage\n"
METHODS = {"bzip2": zipfile.ZIP_BZIP2, "lzma": zipfile.ZIP_LZMA, "deflate64": 9, "zstd": 93, "ppmd": 98, "m77": 77}


# ---------------------------------------------------------------------------------------------- zips


def bundle_doc_and_members(bundle: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest (as JSON) and every member of a bundle, read with plain zipfile."""
    with zipfile.ZipFile(bundle) as archive:
        doc = json.loads(archive.read("manifest.json"))
        members = {i.filename: archive.read(i) for i in archive.infolist() if i.filename != "manifest.json"}
    return doc, members


def signed_bundle(
    dst: Path,
    doc: dict[str, Any],
    members: dict[str, bytes],
    edit: Callable[[dict[str, Any]], object] | None = None,
    methods: dict[str, int] | None = None,
) -> Path:
    """Write ``members`` and a manifest hashing them, with no check at all (the bundle writer refuses hostile models).

    Models are stored and the rest deflated, as the writer does, unless ``methods`` says otherwise.
    """
    doc = {**doc, "members": {k: {"sha256": hashlib.sha256(v).hexdigest(), "size": len(v)} for k, v in members.items()}}
    if edit is not None:
        edit(doc)
    with zipfile.ZipFile(dst, "w") as archive:
        archive.writestr("manifest.json", json.dumps(doc), compress_type=zipfile.ZIP_DEFLATED)
        for key, data in members.items():
            default = zipfile.ZIP_STORED if key.endswith(".onnx") else zipfile.ZIP_DEFLATED
            archive.writestr(key, data, compress_type=(methods or {}).get(key, default))
    return dst


def resign(
    src: Path,
    dst: Path,
    edit: Callable[[dict[str, Any]], object] | None = None,
    methods: dict[str, int] | None = None,
    **members: bytes,
) -> Path:
    """A hash-consistent copy of ``src`` with members replaced (``golden__npz`` names ``golden.npz``)."""
    doc, original = bundle_doc_and_members(src)
    merged = {**original, **{k.replace("__", "."): v for k, v in members.items()}}
    return signed_bundle(dst, doc, merged, edit, methods)


# bz2.BZ2Compressor(9) over 2 GiB of zero bytes (128 x 16 MiB): 1522 bytes that inflate to 2**31.
_BZ2_2GIB = base64.b64decode(
    "QlpoOTFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kO"
    "CeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAA"
    "CCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWp"
    "CoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J"
    "4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAI"
    "IAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakK"
    "gJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni"
    "3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAgg"
    "ADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqA"
    "lzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLf"
    "AV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAA"
    "MIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCX"
    "MUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8B"
    "X45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAw"
    "gE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcx"
    "QVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFf"
    "jkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCA"
    "TUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFB"
    "WSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+O"
    "QADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZgLDoDAEUpUCAwAAABAAIIAAw"
    "zAUppkiRIbFIkSHi7kinChIbc2UzQA=="
)


def compressed_zeros(size: int, method: int) -> bytes:
    """A raw stream of ``size`` zero bytes compressed as zipfile stores ``method`` (streamed: never in memory)."""
    if method == zipfile.ZIP_BZIP2 and size == 2**31:
        return _BZ2_2GIB
    if method == zipfile.ZIP_LZMA:  # zipfile's LZMA layout, with a fast preset: the header carries the properties
        props = lzma._encode_filter_properties({"id": lzma.FILTER_LZMA1, "preset": 0})  # type: ignore[attr-defined]
        filters = [lzma._decode_filter_properties(lzma.FILTER_LZMA1, props)]  # type: ignore[attr-defined]
        comp: Any = lzma.LZMACompressor(lzma.FORMAT_RAW, filters=filters)
        head = struct.pack("<BBH", 9, 4, len(props)) + props
    elif method == zipfile.ZIP_BZIP2:
        comp, head = bz2.BZ2Compressor(9), b""
    elif method == zipfile.ZIP_DEFLATED:
        comp, head = zlib.compressobj(6, zlib.DEFLATED, -15), b""
    else:
        return bytes(64)  # a method zipfile cannot even inflate: its bytes do not matter
    step = min(size, 16 * MiB)
    body = b"".join(comp.compress(bytes(step)) for _ in range(size // step))
    return head + body + comp.compress(bytes(size % step)) + comp.flush()


def bomb_bundle(src: Path, dst: Path, member: str, method: int, inflated: int) -> Path:
    """``src`` with ``member`` replaced by a ``method`` stream inflating to ``inflated`` zero bytes, while the zip
    declares the member's original size and CRC: a small, plausible entry no check on declared sizes flags."""
    with zipfile.ZipFile(src) as zin:
        originals = {i.filename: zin.read(i) for i in zin.infolist()}
    with zipfile.ZipFile(dst, "w") as zout:
        for name, data in originals.items():  # written stored; the bomb is relabelled below
            zout.writestr(name, compressed_zeros(inflated, method) if name == member else data)
    original = originals[member]
    return relabel(dst, member, method=method, size=len(original), crc=zlib.crc32(original))


# Offsets in the local (PK\3\4) and central (PK\1\2) headers: method, crc, uncompressed size, name length, name.
_LAYOUT = {b"PK\x03\x04": (8, 14, 22, 26, 30), b"PK\x01\x02": (10, 16, 24, 28, 46)}


def relabel(
    path: Path, member: str, *, method: int | None = None, size: int | None = None, crc: int | None = None
) -> Path:
    """Patch ``member``'s local and central headers in place: compression method, uncompressed size, CRC."""
    data, name = bytearray(path.read_bytes()), member.encode()
    for signature, (method_at, crc_at, size_at, len_at, name_at) in _LAYOUT.items():
        at = data.find(signature)
        while at >= 0:
            length = int.from_bytes(data[at + len_at : at + len_at + 2], "little")
            if bytes(data[at + name_at : at + name_at + length]) == name:
                for value, offset, width in ((method, method_at, 2), (crc, crc_at, 4), (size, size_at, 4)):
                    if value is not None:
                        data[at + offset : at + offset + width] = value.to_bytes(width, "little")
            at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))
    return path


# ---------------------------------------------------------------------------------------------- npz


def npy(
    shape: Sequence[int],
    descr: str = "<f4",
    data: bytes | None = None,
    *,
    fortran: bool = False,
    header: dict[str, Any] | str | None = None,
    version: tuple[int, int] = (1, 0),
) -> bytes:
    """An ``.npy`` entry whose header declares anything (a str ``header`` is written verbatim); ``data`` defaults
    to the declared bytes (zeros)."""
    buffer = io.BytesIO()
    fields = header if header is not None else {"descr": descr, "fortran_order": fortran, "shape": tuple(shape)}
    if isinstance(fields, str):
        text = (fields + " " * (64 - (len(fields) + 11) % 64) + "\n").encode("latin1")
        buffer.write(np.lib.format.magic(1, 0) + struct.pack("<H", len(text)) + text)
    elif version == (1, 0):
        np.lib.format.write_array_header_1_0(buffer, fields)
    elif version == (2, 0):
        np.lib.format.write_array_header_2_0(buffer, fields)
    else:
        buffer.write(np.lib.format.magic(*version) + b"\x10\x00" + b"{}".ljust(16))
    if data is None:
        data = bytes(int(np.prod(shape)) * np.dtype(descr).itemsize)
    return buffer.getvalue() + data


def npz(entries: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    """A zip of raw entries (``name.npy`` -> bytes), as ``np.savez`` writes them but with any method."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data, compress_type=method)
    return buffer.getvalue()


def golden_entries(rows: int = 3, size: int = 16, dim: int = 16, **override: bytes | None) -> dict[str, bytes]:
    """A valid tiny golden's entries, with some replaced (bytes) or dropped (None)."""
    entries: dict[str, bytes | None] = {
        "inputs.npy": npy((rows, 3, size, size)),
        "features.npy": npy((rows, dim)),
    }
    entries.update({k.replace("__", "."): v for k, v in override.items()})
    return {k: v for k, v in entries.items() if v is not None}


def deflate_npz_bomb(inflated: int, rows_dim: int = 16) -> bytes:
    """A golden whose ``inputs.npy`` entry is deflated: ~1/1000 of ``inflated`` on disk, ``inflated`` in memory."""
    rows = inflated // (3 * 16 * 16 * 4)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("features.npy", npy((rows, rows_dim)))
        with archive.open("inputs.npy", "w", force_zip64=True) as fh:  # streamed: never all in memory
            fh.write(npy((rows, 3, 16, 16), data=b""))
            for _ in range(inflated // (16 * MiB)):
                fh.write(bytes(16 * MiB))
            fh.write(bytes(inflated % (16 * MiB) - inflated % (16 * MiB) % (3 * 16 * 16 * 4)))
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- ONNX


def onnx_model(
    *,
    dim: int = 16,
    in_name: str = "images",
    out_name: str = "features",
    in_shape: Sequence[int | str] = ("batch", 3, "h", "w"),
    out_shape: Sequence[int | str] | None = None,
    in_type: str = "FLOAT",
    tail: str = "",
    extra_input: bool = False,
    seed: int = 0,
) -> bytes:
    """The tiny test backbone (1x1 conv, relu, global pool, flatten), with an optional hostile ``tail``.

    Tails: ``unsqueeze`` (N, D, 1), ``reduce_batch`` (1, D), ``transpose`` (D, N), ``rank1`` (N,), ``int64``
    (an integer output), ``reshape3`` (a fixed (3, D): right for 3 images only), ``hidden_gather3`` (the same,
    hidden from shape inference), ``hidden_reduce`` (1, D) though declared and inferred (batch, D): only a run
    shows either of the last two.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(size=(dim, 3, 1, 1)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(dim,)).astype(np.float32), "b"),
    ]
    first = in_name
    nodes = []
    if in_type != "FLOAT":
        nodes.append(helper.make_node("Cast", [in_name], ["as_float"], to=TensorProto.FLOAT))
        first = "as_float"
    if extra_input:
        nodes.append(helper.make_node("Mul", [first, "scale"], ["scaled"]))
        first = "scaled"
    nodes += [
        helper.make_node("Conv", [first, "w", "b"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["flat" if tail else out_name], axis=1),
    ]
    declared = list(out_shape) if out_shape is not None else ["batch", dim]
    out_type = TensorProto.FLOAT
    if tail == "unsqueeze":
        inits.append(numpy_helper.from_array(np.array([2], np.int64), "axes"))
        nodes.append(helper.make_node("Unsqueeze", ["flat", "axes"], [out_name]))
    elif tail == "reduce_batch":
        nodes.append(helper.make_node("ReduceMean", ["flat"], [out_name], axes=[0], keepdims=1))
    elif tail == "transpose":
        nodes.append(helper.make_node("Transpose", ["flat"], [out_name], perm=[1, 0]))
    elif tail == "rank1":
        nodes.append(helper.make_node("ReduceMean", ["flat"], [out_name], axes=[1], keepdims=0))
    elif tail == "hidden_reduce":  # axes computed at run time ([0]): no shape inference sees the batch vanish
        inits.append(numpy_helper.from_array(np.array([0], np.int64), "zero"))
        nodes += [
            helper.make_node("Shape", ["flat"], ["fshape"], start=0, end=1),
            helper.make_node("Mul", ["fshape", "zero"], ["axes0"]),
            helper.make_node("ReduceMean", ["flat", "axes0"], [out_name], keepdims=1),
        ]
    elif tail == "int64":
        nodes.append(helper.make_node("Cast", ["flat"], [out_name], to=TensorProto.INT64))
        out_type = TensorProto.INT64
    elif tail == "hidden_gather3":  # rows [0, 1, 2] through NonZero on the data: right for 3 images only (data
        # dependent, so onnxruntime cannot fold the Gather into a Slice, which would clamp instead of failing)
        inits += [
            numpy_helper.from_array(np.array(0.0, np.float32), "zero_f"),
            numpy_helper.from_array(np.array([0.0, 1.0, 2.0], np.float32), "rows_f"),
        ]
        nodes += [
            helper.make_node("ReduceMax", ["flat"], ["peak"], keepdims=0),
            helper.make_node("Mul", ["peak", "zero_f"], ["nothing"]),
            helper.make_node("Add", ["nothing", "rows_f"], ["rows"]),
            helper.make_node("Cast", ["rows"], ["rows_i"], to=TensorProto.INT64),
            helper.make_node("NonZero", ["rows_i"], ["nz"]),  # data-dependent length: no inferred batch
            helper.make_node("Squeeze", ["nz"], ["nz_rows"]),
            helper.make_node("Gather", ["rows_i", "nz_rows"], ["picked"], axis=0),
            helper.make_node("Concat", ["start_row", "picked"], ["order"], axis=0),
            helper.make_node("Gather", ["flat", "order"], [out_name], axis=0),
        ]
        inits.append(numpy_helper.from_array(np.array([0], np.int64), "start_row"))
    elif tail == "reshape3":
        inits.append(numpy_helper.from_array(np.array([3, dim], np.int64), "shape3"))
        nodes.append(helper.make_node("Reshape", ["flat", "shape3"], [out_name]))
    elif tail:
        raise ValueError(tail)
    inputs = [helper.make_tensor_value_info(in_name, getattr(TensorProto, in_type), list(in_shape))]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1]))
    graph = helper.make_graph(
        nodes, "tiny", inputs, [helper.make_tensor_value_info(out_name, out_type, declared)], initializer=inits
    )
    opset = 18 if tail == "hidden_reduce" else 17
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _externalise(tensor: Any, location: str, *, flag: bool = True, entries: bool = True, length: int = 0) -> None:
    from onnx import TensorProto

    raw = tensor.raw_data or np.asarray(tensor.float_data, np.float32).tobytes()
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    if flag:
        tensor.data_location = TensorProto.EXTERNAL
    if entries:
        for key, value in (("location", location), ("offset", "0"), ("length", str(length or len(raw)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value


def external_model(where: str = "initializer", location: str = "secret.key", **kw: Any) -> bytes:
    """The tiny backbone with one tensor whose bytes live in ``location``, placed ``where`` in the model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(onnx_model())
    weight = numpy_helper.from_array(np.ones((16, 3, 1, 1), np.float32), "w_ext")
    _externalise(weight, location, **kw)
    graph = model.graph
    if where == "initializer":
        _externalise(graph.initializer[0], location, **kw)
    elif where == "constant":
        graph.node.insert(0, helper.make_node("Constant", [], ["unused"], value=weight))
    elif where == "tensors_attribute":
        node = helper.make_node("Identity", ["images"], ["unused"])
        attr = node.attribute.add()
        attr.name, attr.type = "tensors", onnx.AttributeProto.TENSORS
        attr.tensors.append(weight)
        graph.node.append(node)
    elif where == "subgraph":
        out = [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)]
        inner = helper.make_graph(
            [helper.make_node("Identity", ["w_ext"], ["o"])], "then", [], out, initializer=[weight]
        )
        graph.node.append(helper.make_node("If", ["cond"], ["unused"], then_branch=inner, else_branch=inner))
    elif where == "sparse":
        indices = numpy_helper.from_array(np.array([0], np.int64), "w_ext_indices")
        sparse = helper.make_sparse_tensor(weight, indices, [48])
        graph.sparse_initializer.append(sparse)
    elif where == "function":
        fn = helper.make_function(
            "local",
            "f",
            [],
            ["o"],
            [helper.make_node("Constant", [], ["o"], value=weight)],
            [helper.make_opsetid("", 17)],
        )
        model.functions.append(fn)
    elif where == "training":
        info = model.training_info.add()
        info.initialization.CopyFrom(helper.make_graph([], "init", [], [], initializer=[weight]))
    else:
        raise ValueError(where)
    return bytes(model.SerializeToString())


def epcontext_model() -> bytes:
    """The tiny backbone plus an EPContext node whose context names a file beside the model."""
    import onnx
    from onnx import helper

    model = onnx.load_from_string(onnx_model())
    node = helper.make_node(
        "EPContext", ["images"], ["ctx"], domain="com.microsoft", embed_mode=0, ep_cache_context="engine.bin"
    )
    model.graph.node.append(node)
    return bytes(model.SerializeToString())


def nested_protobuf(depth: int) -> bytes:
    """A model whose graphs nest ``depth`` levels (If node -> attribute -> graph -> node ...), built on the wire."""

    def field(number: int, payload: bytes) -> bytes:
        return _varint(number << 3 | 2) + _varint(len(payload)) + payload

    graph = b""
    for _ in range(depth):
        graph = field(1, field(5, field(6, graph)))  # GraphProto.node -> NodeProto.attribute -> AttributeProto.g
    return field(7, graph)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


# ---------------------------------------------------------------------------------------------- peak memory


def sparse_bytes(size: int, seed: int = 0) -> bytes:
    """Bytes that deflate ~28x: just under the reader's 32x cap, so only the cap's own bound protects."""
    rng = np.random.default_rng(seed)
    return (rng.integers(1, 256, size, dtype=np.uint8) * (rng.random(size) > 0.99)).astype(np.uint8).tobytes()


def memory_corpus(src: Path, folder: Path) -> dict[str, tuple[Path, bool]]:
    """The hostile bundles whose peak memory is measured: name -> (bundle, whether the act also adds an image).

    Each is refused; before round 2 several took gigabytes (a 951-byte bzip2 bundle reached 2 GB, a 0.31 MB
    golden 3.8 GB, a declared 2**40 rows raised MemoryError, input 4096 at crop 0.1 asked ~20 GiB per image).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rows = (10 * MiB) // (3 * 16 * 16 * 4)
    ratio_cap = npz(
        {
            "inputs.npy": npy((rows, 3, 16, 16), data=sparse_bytes(rows * 3 * 16 * 16 * 4)),
            "features.npy": npy((rows, 16)),
        }
    )
    out = {
        "bzip2-2gib-manifest": bomb_bundle(src, folder / "a.edgetl", "manifest.json", zipfile.ZIP_BZIP2, 2**31),
        "bzip2-2gib-golden": bomb_bundle(src, folder / "b.edgetl", "golden.npz", zipfile.ZIP_BZIP2, 2**31),
        "lzma-128mib-golden": bomb_bundle(src, folder / "c.edgetl", "golden.npz", zipfile.ZIP_LZMA, 128 * MiB),
        "npz-deflate-256mib-entry": resign(
            src, folder / "d.edgetl", None, {"golden.npz": zipfile.ZIP_STORED}, golden__npz=deflate_npz_bomb(256 * MiB)
        ),
        "npz-2pow40-rows": resign(
            src,
            folder / "e.edgetl",
            None,
            {"golden.npz": zipfile.ZIP_STORED},
            golden__npz=npz(golden_entries(inputs__npy=npy((2**40, 3, 16, 16), data=bytes(64)))),
        ),
        "golden-at-ratio-cap-10mib": resign(src, folder / "f.edgetl", golden__npz=ratio_cap),
        "onnx-external-dev-zero-1gib": resign(
            src, folder / "g.edgetl", backbone__fp32__onnx=external_model(location="/dev/zero", length=2**30)
        ),
        "graph-reduces-batch-hidden": resign(
            src, folder / "h.edgetl", backbone__fp32__onnx=onnx_model(tail="hidden_reduce")
        ),
    }
    spec = folder / "i.edgetl"
    doc, members = bundle_doc_and_members(src)
    doc["preprocess"].update(input_size=[4096, 4096], crop_pct=0.1)
    with zipfile.ZipFile(spec, "w") as archive:  # the manifest is not hashed: edit it, keep the members
        archive.writestr("manifest.json", json.dumps(doc))
        for name, data in members.items():
            archive.writestr(name, data)
    return {**{k: (v, False) for k, v in out.items()}, "spec-4096-crop-0.1-then-add-40x40": (spec, True)}
