"""K-shot episodes and the device's own few-shot probe, shared by the int8 guard, the host and the benchmarks.

One sampling rule everywhere: for every class of ``labels`` in sorted order, ``shots`` distinct
indices drawn from a numpy ``Generator``. The probe is what a device does with an episode: fit one of
its heads on the support images and classify the rest.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime.heads import create_head

Mask = npt.NDArray[np.bool_]


def support_indices(labels: npt.NDArray[Any], shots: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """``shots`` distinct random indices of every class of ``labels`` (classes in sorted order), from ``rng``."""
    classes = np.unique(labels)
    picks = [rng.choice(np.flatnonzero(labels == c), shots, replace=False) for c in classes]
    return np.concatenate(picks).astype(np.int64) if picks else np.zeros(0, dtype=np.int64)


def episode(labels: npt.NDArray[Any], shots: int, seed: int) -> npt.NDArray[np.int64]:
    """The benchmarks' episode: one generator per (seed, shots), so every head and precision gets the same one."""
    return support_indices(labels, shots, np.random.default_rng(seed * 100 + shots))


def support_masks(labels: npt.NDArray[Any], shots: int, count: int, seed: int = 0) -> list[Mask]:
    """``count`` support masks of ``shots`` images per class from one generator; each episode's rest is its query."""
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(count):
        mask = np.zeros(len(labels), dtype=bool)
        mask[support_indices(labels, shots, rng)] = True
        masks.append(mask)
    return masks


def episode_correctness(
    features: npt.NDArray[np.float32], labels: npt.NDArray[Any], supports: list[Mask], head: str = "auto"
) -> npt.NDArray[np.float64]:
    """``(E, N)``: 1 where ``head`` fitted on episode e's support classifies image n right, 0 wrong, NaN support."""
    out = np.full((len(supports), len(labels)), np.nan)
    for e, support in enumerate(supports):
        fitted = create_head(head).fit(features[support], labels[support])
        query = ~support
        out[e, query] = np.asarray(fitted.predict(features[query])) == labels[query]
    return out


def probe_accuracy(
    features: npt.NDArray[np.float32], labels: npt.NDArray[Any], supports: list[Mask], head: str = "auto"
) -> float:
    """Mean query accuracy (percent) of ``head`` over the episodes ``supports``: the device's own probe."""
    return 100.0 * float(np.nanmean(episode_correctness(features, labels, supports, head)))
