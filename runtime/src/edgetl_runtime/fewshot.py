"""K-shot episodes and the device's own few-shot probe, shared by the int8 guard, the host and the benchmarks.

One sampling rule everywhere: for every class of ``labels`` in sorted order, ``shots`` distinct
indices drawn from a numpy ``Generator``. The probe is what a device does with an episode: fit one of
its heads on the support images and classify the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime.heads import create_head

Mask = npt.NDArray[np.bool_]
# fit on (X, y), predict the labels of X_test
Predict = Callable[[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]], npt.NDArray[Any]]


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


@dataclass(frozen=True)
class FewShotRow:
    """One predictor's test accuracy (fraction) on one episode: K shots per class drawn with ``seed``."""

    precision: str
    head: str
    shots: int
    seed: int
    accuracy: float


def head_predict(name: str) -> Predict:
    """A device head as a predictor: fit a fresh ``create_head(name)``, predict."""

    def predict(x: npt.NDArray[Any], y: npt.NDArray[Any], xt: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return np.asarray(create_head(name).fit(x, y).predict(xt))

    return predict


def simpleshot_predict(x: npt.NDArray[Any], y: npt.NDArray[Any], xt: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """SimpleShot as published, the baseline: centre on the enrolled mean, L2-normalise (CL2N), nearest class mean."""
    mu = x.mean(axis=0)

    def cl2n(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
        centred = a - mu
        out: npt.NDArray[Any] = centred / np.linalg.norm(centred, axis=1, keepdims=True)
        return out

    classes = np.unique(y)
    protos = np.stack([cl2n(x)[y == c].mean(axis=0) for c in classes])
    return np.asarray(classes[np.argmax(cl2n(xt) @ protos.T, axis=1)])


def accuracy_rows(
    pool: npt.NDArray[Any], pool_y: npt.NDArray[Any], test: npt.NDArray[Any], test_y: npt.NDArray[Any],
    predictors: dict[str, Predict], shots: Sequence[int], seeds: int, precision: str = "fp32",
    progress: Callable[[list[tuple[int, int]]], Iterable[tuple[int, int]]] = iter,
) -> list[FewShotRow]:  # fmt: skip
    """The few-shot protocol: for every K and seed, :func:`episode` picks the shots from the pool and every
    predictor, fitted on them, classifies the fixed test set; one row per (predictor, K, seed).

    ``progress`` wraps the list of (K, seed) episodes (a progress bar, say)."""
    rows = []
    for k, seed in progress([(k, seed) for k in shots for seed in range(seeds)]):
        idx = episode(pool_y, k, seed)
        for name, predict in predictors.items():
            accuracy = float(np.mean(predict(pool[idx], pool_y[idx], test) == test_y))
            rows.append(FewShotRow(precision, name, k, seed, accuracy))
    return rows


def summarise(rows: Sequence[FewShotRow]) -> dict[str, dict[str, float]]:
    """Mean accuracy (%) per ``"precision/head"`` and ``"K=k"``, unrounded."""
    out: dict[str, dict[str, float]] = {}
    for precision, head in dict.fromkeys((r.precision, r.head) for r in rows):
        by_k = out.setdefault(f"{precision}/{head}", {})
        for k in sorted({r.shots for r in rows}):
            accs = [r.accuracy for r in rows if (r.precision, r.head, r.shots) == (precision, head, k)]
            by_k[f"K={k}"] = 100 * float(np.mean(accs))
    return out
