"""Where int8 wins and where it does not: per-convolution kernel time of a bundle's fp32 and int8 models here.

A whole-model latency ratio hides its cause. onnxruntime's own profiler times every kernel; the
convolutions of the two models are matched in execution order (the graph is a chain) and grouped by
kind, read from the shapes the fp32 profile records: the stem (3 input channels), depthwise (one
input channel per group) and the other, pointwise-like convolutions. On x86 CPUs without VNNI,
MLAS's int8 pointwise kernels run at about half the fp32 time while depthwise and stem kernels gain
nothing, which is what bounds the int8 speed-up of depthwise-heavy mobile backbones there. Runs on
the device (onnxruntime only), so a device can see where its own int8 time goes.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetl_runtime.errors import BackendError

CONV_OPS = ("Conv", "QLinearConv", "FusedConv", "NhwcFusedConv")


@dataclass(frozen=True)
class ConvTiming:
    """One convolution: its kind and median kernel time in each model (microseconds)."""

    index: int
    kind: str  # "stem" | "depthwise" | "pointwise" | "other"
    fp32_us: float
    int8_us: float

    @property
    def ratio(self) -> float:
        return self.int8_us / self.fp32_us


@dataclass(frozen=True)
class KindTiming:
    """The summed kernel times of a group of convolutions (milliseconds)."""

    count: int
    fp32_ms: float
    int8_ms: float

    @property
    def ratio(self) -> float:
        return self.int8_ms / self.fp32_ms

    @classmethod
    def of(cls, rows: list[ConvTiming]) -> KindTiming:
        return cls(len(rows), sum(r.fp32_us for r in rows) / 1e3, sum(r.int8_us for r in rows) / 1e3)


@dataclass(frozen=True)
class ConvProfile:
    """fp32 vs int8 kernel time of every convolution, per kind and in total, at ``threads`` threads."""

    runs: int
    threads: int
    int8_kernel: str
    convs: list[ConvTiming]

    @property
    def by_kind(self) -> dict[str, KindTiming]:
        kinds = dict.fromkeys(r.kind for r in self.convs)
        return {kind: KindTiming.of([r for r in self.convs if r.kind == kind]) for kind in kinds}

    @property
    def total(self) -> KindTiming:
        return KindTiming.of(self.convs)

    def to_dict(self) -> dict[str, Any]:
        def timing(k: KindTiming, count: bool = True) -> dict[str, Any]:
            out = {"count": k.count} if count else {}
            return out | {"fp32_ms": k.fp32_ms, "int8_ms": k.int8_ms, "ratio": k.ratio}

        return {
            "runs": self.runs, "threads": self.threads, "int8_kernel": self.int8_kernel,
            "by_kind": {kind: timing(k) for kind, k in self.by_kind.items()},
            "total": timing(self.total, count=False), "convs": [{**asdict(r), "ratio": r.ratio} for r in self.convs],
        }  # fmt: skip


def conv_kind(op: str, shapes: list[dict[str, list[int]]]) -> str:
    """The kind of a convolution from the input and weight shapes of its profiler event."""
    x, w = (next(iter(s.values())) for s in shapes[:2])  # (N, C, H, W) (NHWC for Nhwc ops), (O, C/g, kh, kw)
    channels = x[3] if op.startswith("Nhwc") else x[1]
    if w[1] == 3 and channels == 3:
        return "stem"
    if w[1] == 1 and channels > 1:
        return "depthwise"
    return "pointwise" if tuple(w[2:]) == (1, 1) else "other"


def kernel_times_us(
    models: list[bytes], batch: np.ndarray, runs: int, threads: int = 1, kernel: str = "exact"
) -> list[list[tuple[str, float]]]:
    """(kind, median time in us) of every convolution kernel of each model, in execution order; the kinds are
    read from the first model, which must be the fp32 one (the others get "").

    The models' profiled calls alternate, so a change in machine load hits them alike. ``kernel`` is
    the int8 kernel mode (``fast``/``exact``): profile with the one the device runtime chose.
    """
    import onnxruntime as ort

    from edgetl_runtime.backends.onnxruntime import Int8Kernel, session_options

    with tempfile.TemporaryDirectory() as tmp:
        sessions = []
        for i, model in enumerate(models):
            options = session_options(threads, Int8Kernel(kernel))  # the runtime's kernels, not ORT's defaults
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(tmp, f"model{i}")
            sessions.append(ort.InferenceSession(model, options, providers=["CPUExecutionProvider"]))
        for _ in range(runs):
            for session in sessions:
                session.run(None, {session.get_inputs()[0].name: batch})
        traces = [json.loads(Path(session.end_profiling()).read_text()) for session in sessions]
    out = []
    for i, events in enumerate(traces):
        durations: dict[str, list[float]] = defaultdict(list)
        kinds: dict[str, str] = {}
        for event in events:
            args = event.get("args", {})
            if event.get("cat") == "Node" and args.get("op_name") in CONV_OPS:
                durations[event["name"]].append(float(event["dur"]))  # dict keeps first-seen (execution) order
                if i == 0:  # the fp32 model: plain (N, C, H, W) input and (O, C/g, kh, kw) weight shapes
                    kinds.setdefault(event["name"], conv_kind(args["op_name"], args.get("input_type_shape", [])))
        out.append([(kinds.get(name, ""), float(np.median(times))) for name, times in durations.items()])
    return out


def conv_profile(
    fp32_model: bytes, int8_model: bytes, batch: np.ndarray, runs: int = 50, kernel: str = "exact"
) -> ConvProfile:
    """Per-convolution and per-kind fp32 vs int8 kernel times at 1 thread (``batch`` is (1, 3, H, W)), under
    the int8 ``kernel`` mode the device runtime chose.

    Kernel times exclude what sits between kernels (quantize / transpose / layout reorders, dispatch),
    so the total ratio here is a floor under the whole-model latency ratio.
    """
    fp32, int8 = kernel_times_us([fp32_model, int8_model], batch, runs, kernel=kernel)
    if len(fp32) != len(int8) or not fp32:
        raise BackendError(f"could not match convolutions: {len(fp32)} fp32 and {len(int8)} int8 kernels timed")
    rows = [ConvTiming(i, kind, a, b) for i, ((kind, a), (_, b)) in enumerate(zip(fp32, int8, strict=True))]
    return ConvProfile(runs, 1, kernel, rows)
