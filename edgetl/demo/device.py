"""The simulated device: a torch-free Learner enrols K-shot samples of unseen classes and is scored."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.datasets import ImageDataset, k_shot
from edgetl_runtime.learner import Learner


@dataclass(frozen=True)
class FewShotCell:
    """One (bundle, precision, K) point, averaged over seeds."""

    bundle: str
    precision: str
    shots: int
    accuracy_mean: float
    accuracy_std: float
    seeds: int
    enrol_ms: float  # add (cache hits) + fit, per episode
    backbone_runs: int  # images the backbone ran on for this cell: 0 once everything is cached

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def few_shot_curve(
    bundle: Path,
    precision: str,
    pool: ImageDataset,
    test: ImageDataset,
    shots: tuple[int, ...],
    seeds: int,
    threads: int | None,
    head: str = "auto",
) -> list[FewShotCell]:
    """Accuracy vs K through the real device API: every episode is remove-all, add, fit, evaluate.

    Features of the pool and the test set are computed once up front; every
    episode then re-enrols cached images, so the backbone never runs again (``backbone_runs`` = 0):
    exactly what a device sees when classes are re-taught.
    """
    # The shipped head is left out: the curve is the new classes alone, comparable across bundles with and without one.
    learner = Learner.load(
        bundle, None, backend="onnxruntime", precision=precision, threads=threads, head=head, shipped_head=False
    )
    test_labels = [test.classes[i] for i in test.labels]
    test_images = list(test.images)
    pool_images = list(pool.images)
    learner.features(test_images + pool_images)  # the only backbone runs of this curve
    cells = []
    for k in shots:
        accuracies, enrol_ms = [], []
        runs_before = learner.backbone_runs
        for seed in range(seeds):
            support, _ = k_shot(pool, k, seed=seed)
            for label in list(learner.counts()):
                learner.remove(label=label)
            start = time.perf_counter()
            learner.add(list(support.images), [support.classes[i] for i in support.labels])
            learner.fit()
            enrol_ms.append((time.perf_counter() - start) * 1e3)
            accuracies.append(learner.evaluate(test_images, test_labels)["accuracy"])
        cells.append(
            FewShotCell(
                bundle.stem,
                precision,
                k,
                float(np.mean(accuracies)),
                float(np.std(accuracies)),
                seeds,
                float(np.median(enrol_ms[1:] or enrol_ms)),
                learner.backbone_runs - runs_before,
            )
        )
    learner.close()
    return cells
