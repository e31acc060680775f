"""How far a latency is from this machine's limit: FLOPs per image and a measured GEMM peak.

A p50 alone cannot say whether a backend is slow or the machine is: dividing the model's FLOPs by the
latency gives achieved GFLOP/s, and a dense GEMM timed in the same process at the same thread count
gives the most this CPU delivers (fp32: the better of torch.mm and onnxruntime MatMul; int8:
onnxruntime MatMulInteger, the u8s8 kernel family its int8 convolutions use).
One multiply-add counts as 2 FLOPs (or 2 int8 ops).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

GEMM_SIZE = 1024  # large enough to be compute-bound, small enough for ~25 ms per fp32 call on one core


@dataclass(frozen=True)
class FlopCount:
    """FLOPs for one image; ``by_op`` splits them by aten op (convolution, addmm, ...)."""

    per_image: int
    by_op: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PeakEstimate:
    """The best GEMM throughput seen at ``threads``: an empirical ceiling, not a datasheet number."""

    dtype: str
    threads: int
    gflops: float
    calls: int
    method: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_flops(model: Any, image_size: int | tuple[int, int], batch: int = 1, channels: int = 3) -> FlopCount:
    """Count the FLOPs of one eval forward pass with torch's ``FlopCounterMode`` (convs, matmuls)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(torch.zeros(batch, channels, height, width))
    by_op = {str(op).removeprefix("aten."): int(n) // batch for op, n in counter.get_flop_counts()["Global"].items()}
    return FlopCount(int(counter.get_total_flops()) // batch, by_op)


def achieved_gflops(flops_per_image: int, batch: int, latency_ms: float) -> float:
    """GFLOP/s delivered when ``batch`` images take ``latency_ms``."""
    return flops_per_image * batch / (latency_ms / 1e3) / 1e9


def _best_rate(fn: Callable[[], object], ops: float, seconds: float, min_calls: int = 3) -> tuple[float, int]:
    """Highest ops/s over repeated calls for ``seconds``: on a shared machine the best call is the ceiling."""
    fn()  # first call pays allocation and kernel selection
    best, calls, start = float("inf"), 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        calls += 1
    return ops / best / 1e9, calls


def gemm_peak_fp32(threads: int, seconds: float = 1.0, n: int = GEMM_SIZE) -> PeakEstimate:
    """fp32 ``torch.mm`` of two n x n matrices at ``threads`` intra-op threads."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        rate, calls = _best_rate(lambda: torch.mm(a, b, out=out), 2.0 * n**3, seconds)
    finally:
        torch.set_num_threads(previous)
    return PeakEstimate("fp32", threads, rate, calls, f"torch.mm {n}x{n}x{n} fp32, best call")


def gemm_peak_ort(dtype: str, threads: int, seconds: float = 1.0, n: int = GEMM_SIZE) -> PeakEstimate | None:
    """onnxruntime (MLAS) GEMM: fp32 ``MatMul`` or u8 x s8 -> s32 ``MatMulInteger``; ``None`` without onnx."""
    try:
        from edgetl_runtime.backends.onnxruntime import make_session

        model = _gemm_model(n, dtype)
    except ImportError:
        return None
    session = make_session(model, threads=threads)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (n, n), dtype=np.uint8) if dtype == "int8" else rng.random((n, n), dtype=np.float32)
    rate, calls = _best_rate(lambda: session.run(None, {"A": a}), 2.0 * n**3, seconds)
    op = "MatMulInteger u8s8->s32" if dtype == "int8" else "MatMul fp32"
    return PeakEstimate(dtype, threads, rate, calls, f"onnxruntime {op} {n}x{n}x{n}, best call")


def _gemm_model(n: int, dtype: str) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    b: np.ndarray
    if dtype == "int8":
        op, a_type, y_type = "MatMulInteger", TensorProto.UINT8, TensorProto.INT32
        b = rng.integers(-127, 127, (n, n), dtype=np.int8)
    else:
        op, a_type, y_type = "MatMul", TensorProto.FLOAT, TensorProto.FLOAT
        b = rng.standard_normal((n, n), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node(op, ["A", "B"], ["Y"])],
        f"gemm_{dtype}",
        [helper.make_tensor_value_info("A", a_type, [n, n])],
        [helper.make_tensor_value_info("Y", y_type, [n, n])],
        [numpy_helper.from_array(b, "B")],
    )
    return bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())


def measure_peaks(threads: Sequence[int], seconds: float = 1.0) -> list[PeakEstimate]:
    """fp32 (torch and onnxruntime) and int8 GEMM peaks for every thread count; the best of each is the ceiling."""
    peaks: list[PeakEstimate] = []
    for count in threads:
        peaks.append(gemm_peak_fp32(count, seconds))
        peaks += [p for dtype in ("fp32", "int8") if (p := gemm_peak_ort(dtype, count, seconds)) is not None]
    return peaks


def peak_for(peaks: Sequence[PeakEstimate], precision: str, threads: int | None) -> PeakEstimate | None:
    """The ceiling a cell is judged against: int8 cells against the int8 GEMM, the rest against fp32."""
    dtype = "int8" if precision == "int8" else "fp32"
    matching = [p for p in peaks if p.dtype == dtype and (threads is None or p.threads == threads)]
    return max(matching, key=lambda p: p.gflops) if matching else None
