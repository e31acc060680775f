"""Find what an ONNX model would read from outside itself, without importing onnx.

A tensor may keep its bytes in another file (``data_location = EXTERNAL`` with ``external_data``
entries naming a location), and onnxruntime resolves such names against the current directory when a
model is loaded from bytes: a bundle could make a device compute features from ``secret.key``. A
bundle is self-contained, so any such reference is refused. So is an ``EPContext`` node, whose
``ep_cache_context`` may name a file an execution provider loads.

The walk follows the protobuf wire format of ``onnx.proto`` through every place a tensor can sit
(initialisers, sparse initialisers, node attributes, subgraphs, functions, training graphs). It is
linear in the model's size (length-delimited payloads such as raw weights are skipped, not read),
holds no copies, nests at most :data:`MAX_DEPTH` messages, and a malformed message is a
:class:`BundleError`.
"""

from __future__ import annotations

from collections.abc import Iterator

from edgetl_runtime.errors import BundleError

MAX_DEPTH = 100  # protobuf's own default recursion limit

# Message kinds and, for each, the fields that hold sub-messages worth visiting: number -> (kind, name, repeated).
_MODEL, _TRAINING, _FUNCTION, _GRAPH, _NODE, _ATTRIBUTE, _SPARSE, _TENSOR = range(8)
_CHILDREN: dict[int, dict[int, tuple[int, str, bool]]] = {
    _MODEL: {7: (_GRAPH, "graph", False), 20: (_TRAINING, "training_info", True), 25: (_FUNCTION, "functions", True)},
    _TRAINING: {1: (_GRAPH, "initialization", False), 2: (_GRAPH, "algorithm", False)},
    _FUNCTION: {7: (_NODE, "node", True), 11: (_ATTRIBUTE, "attribute_proto", True)},
    _GRAPH: {1: (_NODE, "node", True), 5: (_TENSOR, "initializer", True), 15: (_SPARSE, "sparse_initializer", True)},
    _NODE: {5: (_ATTRIBUTE, "attribute", True)},
    _ATTRIBUTE: {
        5: (_TENSOR, "t", False),
        6: (_GRAPH, "g", False),
        10: (_TENSOR, "tensors", True),
        11: (_GRAPH, "graphs", True),
        22: (_SPARSE, "sparse_tensor", False),
        23: (_SPARSE, "sparse_tensors", True),
    },
    _SPARSE: {1: (_TENSOR, "values", False), 2: (_TENSOR, "indices", False)},
    _TENSOR: {},  # external_data entries are read where they are seen (_Frame.see)
}
_TENSOR_NAME, _EXTERNAL_DATA, _DATA_LOCATION, _EXTERNAL = 8, 13, 14, 1
_NODE_OP_TYPE = 4


class _Malformed(Exception):
    pass


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Malformed("a varint runs past the end of its message")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _Malformed("a varint is longer than 10 bytes")


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or payload start, payload end) of each field in ``buf[start:end]``."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
            continue
        if wire == 2:
            length, pos = _varint(buf, pos, end)
            stop = pos + length
        elif wire == 1:
            stop = pos + 8
        elif wire == 5:
            stop = pos + 4
        else:  # 3/4: groups, which onnx.proto never uses; 6/7: invalid
            raise _Malformed(f"wire type {wire}")
        if stop > end:
            raise _Malformed(f"field {number} runs past the end of its message")
        yield number, wire, pos, stop
        pos = stop


class _Frame:
    """One message being walked: its remaining fields and the little it must remember (O(1) memory)."""

    def __init__(self, kind: int, buf: memoryview, start: int, end: int, path: str) -> None:
        self.kind, self.path = kind, path
        self.fields = _fields(buf, start, end)
        self.counts: dict[int, int] = {}
        self.external = False  # tensor: data_location EXTERNAL or an external_data entry seen
        self.location = ""  # tensor: the last external_data "location" value
        self.name = ""  # tensor: name; node: op_type

    def see(self, buf: memoryview, number: int, wire: int, a: int, b: int) -> None:
        if self.kind == _TENSOR:
            if number == _DATA_LOCATION and wire == 0 and a == _EXTERNAL:
                self.external = True
            elif number == _EXTERNAL_DATA and wire == 2:
                self.external = True
                entry = {n: _text(buf, x, y) for n, w, x, y in _fields(buf, a, b) if w == 2 and n in (1, 2)}
                if entry.get(1) == "location":
                    self.location = entry.get(2, "")
            elif number == _TENSOR_NAME and wire == 2:
                self.name = _text(buf, a, b)
        elif self.kind == _NODE and number == _NODE_OP_TYPE and wire == 2:
            self.name = _text(buf, a, b)

    def finding(self) -> str | None:
        if self.kind == _TENSOR and self.external:
            return f"{self.path} {self.name!r}: data_location EXTERNAL, location {self.location or '?'!r}"
        if self.kind == _NODE and self.name == "EPContext":
            return f"{self.path}: an EPContext node (its context may name a file outside the bundle)"
        return None


def external_references(model: bytes, limit: int = 100) -> list[str]:
    """Up to ``limit`` references from ``model`` to data outside it, as readable strings (empty: self-contained).

    Raises:
        BundleError: the bytes are not a well-formed protobuf message, or nest deeper than MAX_DEPTH.
    """
    buf = memoryview(model)
    found: list[str] = []
    stack = [_Frame(_MODEL, buf, 0, len(buf), "model")]
    try:
        while stack:
            frame = stack[-1]
            item = next(frame.fields, None)
            if item is None:
                stack.pop()
                finding = frame.finding()
                if finding and len(found) < limit:
                    found.append(finding)
                continue
            number, wire, a, b = item
            frame.see(buf, number, wire, a, b)
            child = _CHILDREN[frame.kind].get(number)
            if child is not None and wire == 2:
                if len(stack) >= MAX_DEPTH:
                    raise _Malformed(f"messages nest deeper than {MAX_DEPTH}")
                kind, name, repeated = child
                index = frame.counts[number] = frame.counts.get(number, -1) + 1
                stack.append(_Frame(kind, buf, a, b, f"{frame.path}.{name}" + (f"[{index}]" if repeated else "")))
    except _Malformed as exc:
        raise BundleError(f"The ONNX model is not a well-formed protobuf ({exc}); re-export the bundle.") from None
    return found


def _text(buf: memoryview, a: int, b: int) -> str:
    """A string field for messages: at most 200 bytes, decoded leniently."""
    return bytes(buf[a : min(b, a + 200)]).decode("utf-8", "replace")


def check_self_contained(model: bytes, member: str) -> None:
    """Refuse a model that refers to anything outside its own bytes (or that is not a protobuf at all)."""
    try:
        found = external_references(model)
    except BundleError as exc:
        raise BundleError(f"{member}: {exc}") from None
    if found:
        shown = "; ".join(found[:5]) + (f"; and {len(found) - 5} more" if len(found) > 5 else "")
        raise BundleError(
            f"{member} refers to data outside the bundle ({shown}). A bundle must be self-contained: a device "
            "would read those files from its own disk. Fix: re-export with the weights inside the model "
            "(onnx.save_model(..., save_as_external_data=False))."
        )
