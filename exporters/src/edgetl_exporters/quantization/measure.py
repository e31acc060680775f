"""Run a features ONNX model over preprocessed images, and time several models round-robin."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime.backends.onnxruntime import HOST_KERNEL, Int8Kernel, make_session
from edgetl_runtime.measure.latency import LatencyStats, measure_interleaved

FloatArray = npt.NDArray[np.float32]


def run_features(
    model: str | Path | Any, images: FloatArray, batch_size: int = 32, threads: int | None = None
) -> FloatArray:
    """Features ``(N, D)`` of a features ONNX model (path or an open session) over ``images`` (N, 3, H, W)."""
    session = make_session(str(model), threads) if isinstance(model, (str, Path)) else model
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: images[i : i + batch_size]})[0] for i in range(0, len(images), batch_size)]
    return np.concatenate(outs).astype(np.float32)  # (N, D)


def interleaved_latency(
    models: Mapping[str, str | Path],
    image: FloatArray,
    runs: int = 100,
    warmup: int = 10,
    threads: int = 2,
    kernel: Int8Kernel = HOST_KERNEL,
) -> dict[str, LatencyStats]:
    """Batch latency of several models, timed round-robin in one process so shared-CPU noise hits all alike."""
    sessions = {k: make_session(str(p), threads, kernel=kernel) for k, p in models.items()}
    calls = {k: partial(s.run, None, {s.get_inputs()[0].name: image}) for k, s in sessions.items()}
    return measure_interleaved(calls, rounds=runs, warmup_rounds=warmup)
