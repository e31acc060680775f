"""Few-shot accuracy of every option on the user's folder: K-shot by repeated random splits (the same splits
for every option), all-but-one by the head's exact leave-one-out, each with a 95 % interval."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from edgetl_runtime.compare.config import ALL_BUT_ONE, CompareConfig
from edgetl_runtime.compare.data import LabelledFolder
from edgetl_runtime.compare.options import Option, Problem
from edgetl_runtime.errors import ConfigError, InputError
from edgetl_runtime.fewshot import Mask, episode_correctness, support_masks
from edgetl_runtime.heads.auto import AutoHead
from edgetl_runtime.images import load_image
from edgetl_runtime.preprocess import preprocess_batch

Progress = Callable[[str, int, int], None]
CHUNK = 32  # images decoded at a time: each is decoded once and preprocessed for every option
# Student's t at 97.5 % for 1..30 degrees of freedom; past 30 the normal 1.96 is within 4 %.
_T975 = (12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23, 2.20, 2.18, 2.16, 2.14, 2.13,
         2.12, 2.11, 2.10, 2.09, 2.09, 2.08, 2.07, 2.07, 2.06, 2.06, 2.06, 2.05, 2.05, 2.05, 2.04)  # fmt: skip


@dataclass(frozen=True)
class AccuracyCell:
    """Mean query accuracy (percent) at one K over ``splits`` splits, with its 95 % interval."""

    column: str  # "K=1", "K=5", "all-but-one"
    mean: float
    low: float
    high: float
    splits: int  # random splits (1: exact leave-one-out)
    queries: int  # query images scored, all splits together
    method: str

    def overlaps(self, other: AccuracyCell) -> bool:
        return self.low <= other.high and other.low <= self.high

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def extract_features(
    options: Sequence[Option], data: LabelledFolder, problems: list[Problem], progress: Progress | None = None
) -> tuple[dict[str, npt.NDArray[np.float32]], npt.NDArray[np.int64]]:
    """Features ``(N, D)`` of every readable image for every option, and the labels of those images.

    Images are decoded once (``images.load_image``, the device's decoder), in chunks, and preprocessed with each
    option's own spec, so a folder of large photos is never held in memory at once. An unreadable file is named.
    """
    report = progress or (lambda stage, done, total: None)
    parts: dict[str, list[npt.NDArray[np.float32]]] = {o.name: [] for o in options}
    kept: list[int] = []
    total = len(data.files)
    for start in range(0, total, CHUNK):
        report("features", start, total)
        images, indices = [], []
        for i in range(start, min(start + CHUNK, total)):
            try:
                images.append(load_image(data.files[i]))
                indices.append(i)
            except InputError as exc:
                problems.append(Problem(str(data.files[i]), f"left out of the accuracy: {exc}"))
        if not images:
            continue
        kept += indices
        prepared: dict[str, npt.NDArray[np.float32]] = {}  # one preprocessing per spec: a bundle's precisions share it
        for option in options:
            key = json.dumps(option.spec.to_dict(), sort_keys=True)
            if key not in prepared:
                prepared[key] = preprocess_batch(images, option.spec)  # (B, 3, H, W)
            parts[option.name].append(option.backend.run(prepared[key]))  # (B, D)
    report("features", total, total)
    dims = {o.name: o.feature_dim for o in options}
    features = {n: np.concatenate(p) if p else np.zeros((0, dims[n]), np.float32) for n, p in parts.items()}
    return features, data.labels[np.asarray(kept, dtype=np.int64)]


def split_masks(labels: npt.NDArray[np.int64], columns: Sequence[str], config: CompareConfig) -> dict[str, list[Mask]]:
    """The support masks of every K column, drawn once so that every option is scored on the same splits."""
    masks = {}
    for column in columns:
        if column.startswith("K="):
            k = int(column.removeprefix("K="))
            masks[column] = support_masks(labels, k, config.splits, seed=config.seed * 1000 + k)
        elif config.head != "auto":  # no closed-form leave-one-out: one random query per class per split
            masks[column] = [~m for m in support_masks(labels, 1, config.splits, seed=config.seed * 1000)]
    return masks


def score(
    features: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
    columns: Sequence[str],
    masks: dict[str, list[Mask]],
    config: CompareConfig,
) -> dict[str, AccuracyCell]:
    """Every accuracy column for one option's features."""
    out = {}
    for column in columns:
        if column == ALL_BUT_ONE and column not in masks:
            out[column] = _leave_one_out(features, labels, config.head)
            continue
        correct = episode_correctness(features, labels, masks[column], config.head)  # (E, N), NaN = enrolled
        per_split = 100.0 * np.nanmean(correct, axis=1)  # (E,)
        mean, spread = float(per_split.mean()), float(per_split.std(ddof=1))
        half = _t975(len(per_split) - 1) * spread / math.sqrt(len(per_split))
        queries = int(np.isfinite(correct).sum())
        method = f"{len(per_split)} random splits, mean +- t-interval over splits"
        out[column] = AccuracyCell(column, mean, mean - half, mean + half, len(per_split), queries, method)
    return out


def _leave_one_out(features: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], head: str) -> AccuracyCell:
    """All-but-one, exactly: ``auto``'s closed-form leave-one-out over every image (its ridge alpha is chosen by the
    same leave-one-out, so it reads a little high); binomial interval over the images."""
    fitted = AutoHead().fit(features, labels) if head == "auto" else None
    if fitted is None:
        raise ConfigError(f"exact leave-one-out is computed by the auto head only, not {head!r}")
    accuracy = float(fitted.loo_accuracy_[fitted.kind_])
    n = len(labels)
    half = 1.96 * math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / n)
    method = "exact leave-one-out of the auto head over every image, binomial interval"
    return AccuracyCell(ALL_BUT_ONE, 100 * accuracy, 100 * (accuracy - half), 100 * (accuracy + half), 1, n, method)


def _t975(df: int) -> float:
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.96
