"""Judge a quantized model by the task, not by ``atol``: feature cosine and few-shot probe accuracy.

The probe is the one a device runs (nearest class mean on L2-normalised features), evaluated on
the same support/query splits for fp32 and int8 so the accuracy delta is paired, not two noisy
numbers subtracted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime.backends.onnxruntime import HOST_KERNEL, Int8Kernel, make_session
from edgetl_runtime.errors import InputError, raise_all
from edgetl_runtime.latency import LatencyStats, measure_interleaved

FloatArray = npt.NDArray[np.float32]


def run_features(
    model: str | Path | Any, images: FloatArray, batch_size: int = 32, threads: int | None = None
) -> FloatArray:
    """Features ``(N, D)`` of a features ONNX model (path or an open session) over ``images`` (N, 3, H, W)."""
    session = make_session(str(model), threads) if isinstance(model, (str, Path)) else model
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: images[i : i + batch_size]})[0] for i in range(0, len(images), batch_size)]
    return np.concatenate(outs).astype(np.float32)  # (N, D)


def cosine_stats(reference: FloatArray, other: FloatArray) -> tuple[float, float]:
    """Mean and minimum per-row cosine similarity between two ``(N, D)`` feature arrays."""
    a = reference.astype(np.float64)
    b = other.astype(np.float64)
    denom = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    cos = (a * b).sum(axis=1) / denom  # (N,)
    return float(cos.mean()), float(cos.min())


def _l2n(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    norms: npt.NDArray[np.float64] = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x / norms


def few_shot_splits(labels: npt.NDArray[Any], shots: int, seeds: Sequence[int]) -> list[npt.NDArray[np.bool_]]:
    """One boolean support mask per seed: ``shots`` random samples of every class; the rest is query."""
    classes = np.unique(labels)
    masks = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        mask = np.zeros(len(labels), dtype=bool)
        for c in classes:
            mask[rng.choice(np.flatnonzero(labels == c), size=shots, replace=False)] = True
        masks.append(mask)
    return masks


def ncm_accuracy(features: FloatArray, labels: npt.NDArray[Any], masks: list[npt.NDArray[np.bool_]]) -> float:
    """Nearest-class-mean accuracy (percent), averaged over the support masks."""
    feats = _l2n(features.astype(np.float64))
    accs = []
    for support in masks:
        classes = np.unique(labels[support])
        means = _l2n(np.stack([feats[support & (labels == c)].mean(axis=0) for c in classes]))  # (C, D)
        pred = classes[np.argmax(feats[~support] @ means.T, axis=1)]
        accs.append(float(np.mean(pred == labels[~support])))
    return 100.0 * float(np.mean(accs))


def check_eval_data(images: FloatArray, labels: npt.NDArray[Any], shots: int) -> None:
    """Every class needs more than ``shots`` samples, or the probe has no query images."""
    problems = []
    if images.ndim != 4 or len(images) != len(labels):
        problems.append(f"eval_images {images.shape} and eval_labels {np.shape(labels)} must be (N, 3, H, W) and (N,)")
    else:
        classes, counts = np.unique(labels, return_counts=True)
        if len(classes) < 2:
            problems.append(f"eval_labels hold {len(classes)} class; the probe needs at least 2")
        thin = [str(c) for c, n in zip(classes, counts, strict=True) if n <= shots]
        if thin:
            problems.append(f"classes {thin} have <= shots={shots} samples; give more eval images or lower shots")
    raise_all(InputError, problems, "Unusable evaluation data for the quantization guard")


@dataclass(frozen=True)
class Evaluation:
    """Task-level agreement of a quantized model with its fp32 reference."""

    cosine_mean: float
    cosine_min: float
    accuracy_fp32: float
    accuracy_quant: float

    @property
    def drop(self) -> float:
        """Accuracy points lost by quantizing (negative when quantizing helped)."""
        return self.accuracy_fp32 - self.accuracy_quant


def evaluate_against(
    fp32_features: FloatArray,
    quant_features: FloatArray,
    labels: npt.NDArray[Any],
    masks: list[npt.NDArray[np.bool_]],
) -> Evaluation:
    cos_mean, cos_min = cosine_stats(fp32_features, quant_features)
    return Evaluation(
        cos_mean, cos_min, ncm_accuracy(fp32_features, labels, masks), ncm_accuracy(quant_features, labels, masks)
    )


def interleaved_latency(
    models: dict[str, str | Path],
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
