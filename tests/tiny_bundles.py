"""Tiny real bundles for tests: a 1x1-conv + global-pool ONNX model built with onnx.helper.

No torch: the runtime must work without it. The model is small enough that tests run in
milliseconds, but it is a real ONNX graph executed by onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgetl_runtime.backends.int8_targets import ALL_CPU_FAMILIES
from edgetl_runtime.bundle.manifest import BackboneInfo, Manifest, Precision
from edgetl_runtime.preprocess import PreprocessSpec, preprocess_batch

TINY_DIM = 16
TINY_SPEC = PreprocessSpec(input_size=(16, 16), crop_pct=1.0, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def tiny_onnx(dim: int = TINY_DIM, seed: int = 0, scale: float = 1.0) -> bytes:
    """images (N,3,H,W) -> Conv1x1 -> Relu -> GlobalAveragePool -> Flatten -> features (N, dim).

    ``scale`` multiplies the weights: 1.01 gives another model (another digest) whose features are within
    the golden check's tolerance, like a bundle's int8 member beside its fp32 one.
    """
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array((scale * rng.normal(size=(dim, 3, 1, 1))).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(size=(dim,)).astype(np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["images", "w", "b"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["features"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", dim])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def golden_for(model: bytes, spec: PreprocessSpec, count: int = 3) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8) for _ in range(count)]
    inputs = preprocess_batch(images, spec)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return {"inputs": inputs, "features": session.run(["features"], {"images": inputs})[0]}


def write_tiny_bundle(
    path: Path,
    *,
    int8_copy: bool = False,
    seed: int = 0,
    members_extra: dict[str, bytes] | None = None,
    quantization: dict[str, object] | None = None,
    int8_model: bytes | None = None,
    spec: PreprocessSpec = TINY_SPEC,
) -> Path:
    """A bundle of the tiny model; its int8 member (a copy, or ``int8_model``) says what it is.

    Without ``quantization``, an int8 copy of the fp32 model is recorded as meant for every CPU family,
    which it is (it is not quantized): no test sees an int8-target warning that depends on its CPU.
    """
    write_bundle = pytest.importorskip("edgetl_exporters.bundle_writer").write_bundle
    npz_bytes = pytest.importorskip("edgetl_exporters.bundle_writer").npz_bytes
    model = tiny_onnx(seed=seed)
    members = {Precision.FP32.member: model, "golden.npz": npz_bytes(golden_for(model, spec))}
    precisions = [Precision.FP32]
    if int8_copy or int8_model is not None:  # exercises precision selection, not quantization
        members[Precision.INT8.member] = model if int8_model is None else int8_model
        precisions.append(Precision.INT8)
    members.update(members_extra or {})
    manifest = Manifest(
        backbone=BackboneInfo("tiny", "tiny", "random", TINY_DIM),
        preprocess=spec,
        members={},
        precisions=tuple(precisions),
        quantization=dict(quantization if quantization is not None else _portable(precisions)),
        versions={"test": "1"},
    )
    write_bundle(path, manifest, members)
    return path


def _portable(precisions: list[Precision]) -> dict[str, object]:
    return {"targets": list(ALL_CPU_FAMILIES)} if Precision.INT8 in precisions else {}


def write_pngs(folder: Path, color: tuple[int, int, int], n: int, seed: int) -> Path:
    """``n`` noisy PNGs of one colour (sizes differ by a row each), as a user's class folder."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = np.clip(np.array(color) + rng.integers(-25, 26, size=(18 + i, 22, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return folder
