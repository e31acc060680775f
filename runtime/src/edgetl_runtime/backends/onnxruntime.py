"""onnxruntime backend (CPU, or CUDA / TensorRT execution providers when installed)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime._optional import require
from edgetl_runtime.bundle.graph_check import check_session_io, run_session
from edgetl_runtime.bundle.manifest import Precision
from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.errors import BackendError, InputError


class Int8Kernel(str, Enum):
    """Which of MLAS's x86 int8 kernels a session uses (``session.x64quantprecision``; a no-op off x86).

    On x86 without VNNI the fast u8 x s8 kernel adds products pairwise into int16 (``vpmaddubsw``),
    which saturates unless weights are 7-bit (``reduce_range``): an 8-bit Lite0 falls to cosine
    0.69-0.86 against fp32 there. The exact kernel accumulates in int32 and is right everywhere, but
    it also replaces VNNI's exact ``vpdpbusd`` path, doubling int8 time on VNNI CPUs (measured 1.45x
    fp32 vs 0.47x fast, benchmarks/bench_int8_kernels.py). The device picks per CPU and member.
    """

    FAST = "fast"
    EXACT = "exact"

    @property
    def session_config(self) -> dict[str, str]:
        return {"session.x64quantprecision": "1" if self is Int8Kernel.EXACT else "0"}


# Host-side sessions (golden outputs, the accuracy guard) compute what the model means on any CPU.
HOST_KERNEL = Int8Kernel.EXACT


def session_options(threads: int | None = None, kernel: Int8Kernel = HOST_KERNEL) -> Any:
    """Full graph optimisation, the int8 ``kernel`` and a fixed thread count: the one place edgetl's
    onnxruntime sessions get their settings (benchmarks and profiles included)."""
    ort = require("onnxruntime", "The onnxruntime backend")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for key, value in Int8Kernel(kernel).session_config.items():
        options.add_session_config_entry(key, value)
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return options


def make_session(
    model: bytes | str,
    threads: int | None = None,
    providers: list[str] | None = None,
    kernel: Int8Kernel = HOST_KERNEL,
) -> Any:
    """An InferenceSession with full graph optimisation, the given int8 kernel and a fixed thread count."""
    ort = require("onnxruntime", "The onnxruntime backend")
    options = session_options(threads, kernel)
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
    kernel: Int8Kernel = HOST_KERNEL

    @classmethod
    def from_bundle(
        cls,
        bundle: Bundle,
        precision: Precision,
        threads: int | None = None,
        providers: list[str] | None = None,
        kernel: Int8Kernel = HOST_KERNEL,
    ) -> OrtBackend:
        session = make_session(bundle.model_bytes(precision), threads, providers, kernel)
        check_session_io(session, bundle.manifest, precision.member)  # names, ranks, shapes, dtypes
        info = bundle.manifest.backbone
        provider = session.get_providers()[0].replace("ExecutionProvider", "")
        name = f"onnxruntime-{provider.lower()}"
        return cls(session, precision, info.input_name, info.output_name, name, Int8Kernel(kernel))

    def run(self, inputs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if inputs.ndim != 4 or inputs.dtype != np.float32:
            raise InputError(f"Backend input must be float32 (N, 3, H, W), got {inputs.dtype} {inputs.shape}.")
        return run_session(self.session, self.input_name, self.output_name, inputs, self.name)  # (N, D) float32
