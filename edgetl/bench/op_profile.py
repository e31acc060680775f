"""Where int8 wins and where it does not: per-convolution time of a bundle's fp32 and int8 models.

A whole-model latency ratio hides its cause. onnxruntime's own profiler times every kernel; the
convolutions of the two models are matched in execution order (the graph is a chain) and grouped by
kind, read from the fp32 graph: the stem (3 input channels), depthwise (one input channel per
group) and the other, pointwise-like convolutions. On x86 CPUs without VNNI, MLAS's int8 pointwise
kernels run at about half the fp32 time while depthwise and stem kernels gain nothing, which is what
bounds the int8 speed-up of depthwise-heavy mobile backbones there.
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

CONV_OPS = ("Conv", "QLinearConv", "FusedConv", "NhwcFusedConv")


@dataclass(frozen=True)
class ConvTiming:
    index: int
    kind: str  # "stem" | "depthwise" | "pointwise" | "other"
    fp32_us: float
    int8_us: float

    @property
    def ratio(self) -> float:
        return self.int8_us / self.fp32_us


def conv_kinds(fp32_model: bytes) -> list[str]:
    """Kind of every Conv of the fp32 graph, in graph (= execution) order."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(fp32_model).graph
    weights = {init.name: numpy_helper.to_array(init).shape for init in graph.initializer}
    kinds = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        shape = weights.get(node.input[1], (0, 0, 0, 0))  # (out, in / group, kh, kw)
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if shape[1] == 3 and group == 1:
            kinds.append("stem")
        elif group > 1 and shape[1] == 1:
            kinds.append("depthwise")
        elif tuple(shape[2:]) == (1, 1):
            kinds.append("pointwise")
        else:
            kinds.append("other")
    return kinds


def kernel_times_us(
    models: list[bytes], batch: np.ndarray, runs: int, threads: int = 1, kernel: str = "exact"
) -> list[list[float]]:
    """Median time of every convolution kernel of each model, in execution order.

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
    for events in traces:
        per_node: dict[str, list[float]] = defaultdict(list)
        for event in events:
            if event.get("cat") == "Node" and event["args"].get("op_name") in CONV_OPS:
                per_node[event["name"]].append(float(event["dur"]))  # dict keeps first-seen (execution) order
        out.append([float(np.median(durations)) for durations in per_node.values()])
    return out


def conv_profile(
    fp32_model: bytes, int8_model: bytes, batch: np.ndarray, runs: int = 50, kernel: str = "exact"
) -> dict[str, Any]:
    """Per-convolution and per-kind fp32 vs int8 kernel times at 1 thread (``batch`` is (1, 3, H, W)),
    under the int8 ``kernel`` mode the device runtime chose.

    Kernel times exclude what sits between kernels (quantize / transpose / layout reorders, dispatch),
    so the total ratio here is a floor under the whole-model latency ratio.
    """
    kinds = conv_kinds(fp32_model)
    fp32, int8 = kernel_times_us([fp32_model, int8_model], batch, runs, kernel=kernel)
    if not len(kinds) == len(fp32) == len(int8):
        return {"error": f"could not match convolutions: {len(kinds)} in the graph, {len(fp32)} / {len(int8)} timed"}
    rows = [ConvTiming(i, k, a, b) for i, (k, a, b) in enumerate(zip(kinds, fp32, int8, strict=True))]
    by_kind = {}
    for kind in dict.fromkeys(kinds):
        picked = [r for r in rows if r.kind == kind]
        f, q = sum(r.fp32_us for r in picked), sum(r.int8_us for r in picked)
        by_kind[kind] = {"count": len(picked), "fp32_ms": f / 1e3, "int8_ms": q / 1e3, "ratio": q / f}
    total_f, total_q = sum(r.fp32_us for r in rows), sum(r.int8_us for r in rows)
    return {
        "runs": runs,
        "threads": 1,
        "int8_kernel": kernel,
        "by_kind": by_kind,
        "total": {"fp32_ms": total_f / 1e3, "int8_ms": total_q / 1e3, "ratio": total_q / total_f},
        "convs": [{**asdict(r), "ratio": r.ratio} for r in rows],
    }
