"""onnxruntime backend (CPU, or CUDA / TensorRT execution providers when installed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime._optional import require
from edgetl_runtime.bundle import Bundle
from edgetl_runtime.errors import BackendError, InputError
from edgetl_runtime.manifest import Precision

# On x86 without VNNI, MLAS's fast u8 x s8 kernel adds products pairwise into int16 (vpmaddubsw), which
# saturates unless weights are 7-bit (``reduce_range``, the x86-avx2 preset). Models quantized for
# TensorRT, ARM or VNNI use all 8 bits: under the fast kernel their Lite0 features fall to cosine
# 0.69-0.86 to fp32, against 0.96-0.97 exact. This option selects the exact kernel: every model computes
# what it was quantized to, and 7-bit models run as fast as before (benchmarks/bench_int8_kernels.py).
SESSION_CONFIG = {"session.x64quantprecision": "1"}


def session_options(threads: int | None = None, config: dict[str, str] | None = None) -> Any:
    """Full graph optimisation, ``config`` entries (default :data:`SESSION_CONFIG`) and a fixed thread count:
    the one place edgetl's onnxruntime sessions get their settings (benchmarks and profiles included)."""
    ort = require("onnxruntime", "The onnxruntime backend")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for key, value in (SESSION_CONFIG if config is None else config).items():
        options.add_session_config_entry(key, value)
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return options


def make_session(model: bytes | str, threads: int | None = None, providers: list[str] | None = None) -> Any:
    """An InferenceSession with full graph optimisation, exact int8 arithmetic and a fixed thread count."""
    ort = require("onnxruntime", "The onnxruntime backend")
    options = session_options(threads)
    available = ort.get_available_providers()
    wanted = providers or ["CPUExecutionProvider"]
    missing = [p for p in wanted if p not in available]
    if missing:
        raise BackendError(f"onnxruntime providers {missing} are not available here (have {available}).")
    try:
        return ort.InferenceSession(model, sess_options=options, providers=wanted)
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph types
        raise BackendError(f"onnxruntime could not load the model: {exc}") from exc


@dataclass
class OrtBackend:
    """Features from an ONNX model through onnxruntime. ``InferenceSession.run`` is thread-safe."""

    session: Any
    precision: Precision
    input_name: str
    output_name: str
    name: str = "onnxruntime"

    @classmethod
    def from_bundle(
        cls, bundle: Bundle, precision: Precision, threads: int | None = None, providers: list[str] | None = None
    ) -> OrtBackend:
        session = make_session(bundle.model_bytes(precision), threads, providers)
        info = bundle.manifest.backbone
        provider = session.get_providers()[0].replace("ExecutionProvider", "")
        return cls(session, precision, info.input_name, info.output_name, f"onnxruntime-{provider.lower()}")

    def run(self, inputs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if inputs.ndim != 4 or inputs.dtype != np.float32:
            raise InputError(f"Backend input must be float32 (N, 3, H, W), got {inputs.dtype} {inputs.shape}.")
        (features,) = self.session.run([self.output_name], {self.input_name: inputs})
        return np.asarray(features, dtype=np.float32)
