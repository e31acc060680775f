"""Check a model's graph against its manifest at load, and each of its outputs at run time.

A model that disagrees with its manifest (another output width, an extra axis, other names, a
fixed input size, a fixed batch) would otherwise fail at the first prediction with a raw
ValueError, IndexError or onnxruntime error, or silently broadcast. Session inputs and outputs are
compared with the manifest once, right after the session is created, and every mismatch is listed
in one :class:`BackendError`. What a graph declares need not be what it computes (a graph can
declare a ``batch`` axis and reduce it), so each output's shape is checked too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime.bundle.manifest import Manifest
from edgetl_runtime.errors import BackendError, raise_all
from edgetl_runtime.numerics import MAX_FEATURE_MAGNITUDE

FLOAT = "tensor(float)"  # what the runtime feeds (float32 NCHW) and reads back


def _dims(shape: Any) -> list[int | None]:
    """onnxruntime shape -> ints for fixed axes, None for symbolic or unknown ones."""
    return [d if isinstance(d, int) and not isinstance(d, bool) and d >= 0 else None for d in (shape or [])]


def io_problems(inputs: Sequence[Any], outputs: Sequence[Any], manifest: Manifest) -> list[str]:
    """Every way the session's inputs/outputs (onnxruntime ``NodeArg``-like: name, type, shape) miss the manifest."""
    info = manifest.backbone
    height, width = manifest.preprocess.input_size
    problems: list[str] = []
    by_name = {arg.name: arg for arg in inputs}
    extra = sorted(set(by_name) - {info.input_name})
    if extra:
        problems.append(f"the graph also needs inputs {extra}, which the runtime never feeds")
    image = by_name.get(info.input_name)
    if image is None:
        problems.append(f"the graph has no input {info.input_name!r} (its inputs: {sorted(by_name)})")
    else:
        problems += _arg_problems(image, "input", [None, 3, height, width], "(N, 3, H, W)")
    produced = {arg.name: arg for arg in outputs}
    features = produced.get(info.output_name)
    if features is None:
        problems.append(f"the graph has no output {info.output_name!r} (its outputs: {sorted(produced)})")
    else:
        problems += _arg_problems(features, "output", [None, info.feature_dim], "(N, D)")
    return problems


def _arg_problems(arg: Any, kind: str, expected: list[int | None], layout: str) -> list[str]:
    problems = []
    if arg.type != FLOAT:
        problems.append(f"{kind} {arg.name!r} has type {arg.type}, the runtime uses {FLOAT} (float32)")
    dims, declared = _dims(arg.shape), list(arg.shape or [])
    if not declared:  # onnxruntime reports an unknown rank as []: the run-time check below still applies
        return problems
    want = ["N", *expected[1:]]
    if len(dims) != len(expected):
        return [*problems, f"{kind} {arg.name!r} has shape {declared}, the manifest implies {layout} = {want}"]
    if dims[0] is not None:
        problems.append(
            f"{kind} {arg.name!r} has a fixed batch axis {dims[0]} (shape {declared}); the runtime runs batches "
            "of any size: export with a dynamic batch axis"
        )
    bad = [i for i in range(1, len(dims)) if dims[i] is not None and dims[i] != expected[i]]
    if bad:
        problems.append(f"{kind} {arg.name!r} has shape {declared}, the manifest implies {layout} = {want}")
    return problems


def check_session_io(session: Any, manifest: Manifest, member: str) -> None:
    """Raise one :class:`BackendError` listing every mismatch between ``session`` and ``manifest``."""
    raise_all(
        BackendError,
        io_problems(session.get_inputs(), session.get_outputs(), manifest),
        f"{member} does not match its manifest (backbone {manifest.backbone.name!r}, feature_dim "
        f"{manifest.backbone.feature_dim}, input_size {list(manifest.preprocess.input_size)}); re-export the bundle",
    )


def check_features(features: Any, rows: int, dim: int | None, backend: str) -> npt.NDArray[np.float32]:
    """``features`` as float32 ``(rows, dim)``, or a :class:`BackendError` saying what the model returned."""
    array = np.asarray(features)
    if array.ndim != 2 or array.shape[0] != rows or (dim is not None and array.shape[1] != dim):
        want = f"({rows}, {'D' if dim is None else dim})"
        raise BackendError(
            f"{backend} returned features of shape {array.shape} for {rows} inputs; expected {want}. The model "
            "computes something other than one feature row per image (a graph that reduces or reshapes the batch "
            "axis, or another output width); re-export the bundle."
        )
    if array.dtype.kind != "f":
        raise BackendError(f"{backend} returned {array.dtype} features; expected floats. Re-export the bundle.")
    peak = float(np.abs(array).max()) if array.size else 0.0
    if peak > MAX_FEATURE_MAGNITUDE:  # NaN compares False: the golden check scores NaN rows as disagreeing
        raise BackendError(
            f"{backend} returned features of magnitude {peak:.3g}, beyond the {MAX_FEATURE_MAGNITUDE:g} any real "
            "backbone's pooled features stay within; the model is broken or hostile. Re-export the bundle."
        )
    return np.asarray(array, dtype=np.float32)


def run_session(
    session: Any, input_name: str, output_name: str, inputs: npt.NDArray[np.float32], backend: str
) -> npt.NDArray[np.float32]:
    """``session.run`` for one output, any onnxruntime failure a :class:`BackendError`, the output shape checked."""
    try:
        (features,) = session.run([output_name], {input_name: inputs})
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidArgument / RuntimeException types
        raise BackendError(f"{backend} failed on a batch of shape {inputs.shape}: {exc}") from exc
    return check_features(features, len(inputs), None, backend)
