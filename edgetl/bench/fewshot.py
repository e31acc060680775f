"""``edgetl bench fewshot``: accuracy vs K for every head beside SimpleShot, on bundle features.

Features come from the bundle through the device runtime (onnxruntime), once per precision, so the
fp32 vs int8 comparison is exactly what a device would see. The protocol: a fixed class-balanced
pool of train images, K shots per class drawn per seed, a fixed test set; the same episodes for
every head. scikit-learn is a dev extra, not a dependency: its baseline is passed in by
``benchmarks/`` scripts (``benchmarks/sklearn_baseline.py``), never imported here. A K that the pool
cannot supply for every class is skipped with a note, and the figures are written after each
precision, so a later failure loses nothing already measured.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.datasets import ImageDataset, balanced_subset
from edgetl_runtime.bundle import Bundle
from edgetl_runtime.errors import ConfigError, DatasetError, raise_all
from edgetl_runtime.fewshot import (
    FewShotRow,
    Predict,
    accuracy_rows,
    episode,
    head_predict,
    simpleshot_predict,
    summarise,
)
from edgetl_runtime.measure.latency import measure

HEADS = ("auto", "ridge", "ncm", "logistic")


@dataclass(frozen=True)
class FewShotBenchConfig:
    shots: tuple[int, ...] = (1, 5, 10, 20)
    seeds: int = 5
    pool_per_class: int = 100
    test_count: int = 2000
    precisions: tuple[str, ...] = ("fp32", "int8")
    heads: tuple[str, ...] = HEADS
    fit_sizes: tuple[int, ...] = (10, 50, 100, 200, 500)
    threads: int | None = 2
    output_dir: Path = field(default_factory=lambda: Path("runs/bench"))

    def __post_init__(self) -> None:
        problems = [f"unknown head {h!r}" for h in self.heads if h not in HEADS]
        if max(self.shots) > self.pool_per_class:
            problems.append(f"largest K {max(self.shots)} exceeds pool_per_class {self.pool_per_class}")
        if self.seeds < 1 or self.test_count < 1:
            problems.append("seeds and test_count must be positive")
        raise_all(ConfigError, problems, "Invalid FewShotBenchConfig")


@dataclass(frozen=True)
class FitTime:
    """One head's fit time on ``n`` enrolled samples."""

    head: str
    n: int
    p50_ms: float
    mean_ms: float
    runs: int


@dataclass
class FewShotBenchResult:
    """Accuracy per (precision, head, K, seed), its mean per K, and head fit times; ``to_dict`` is the JSON."""

    config: FewShotBenchConfig
    bundle: str
    accuracy: list[FewShotRow] = field(default_factory=list)
    fit_times: list[FitTime] = field(default_factory=list)
    feature_seconds: dict[str, float] = field(default_factory=dict)
    summary: dict[str, dict[str, float]] = field(default_factory=dict)  # "precision/head" -> "K=k" -> %
    notes: list[str] = field(default_factory=list)  # what was skipped and why

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": {**asdict(self.config), "output_dir": str(self.config.output_dir)},
            "bundle": self.bundle,
            "accuracy": [asdict(r) for r in self.accuracy],
            "fit_times": [asdict(r) for r in self.fit_times],
            "feature_seconds": self.feature_seconds,
            "summary": self.summary,
            "notes": self.notes,
        }


def accuracy_table(
    pool: np.ndarray,
    pool_y: np.ndarray,
    test: np.ndarray,
    test_y: np.ndarray,
    config: FewShotBenchConfig,
    progress: str | None = None,
    precision: str = "fp32",
    baselines: dict[str, Predict] | None = None,
    shots: tuple[int, ...] | None = None,
) -> list[FewShotRow]:
    """One row per (head or baseline, K, seed) with the test accuracy; ``progress`` names a progress bar.

    ``baselines``: other predictors to score on the same episodes (benchmarks pass scikit-learn's);
    ``shots``: the K values to run (default: the config's).
    """
    from tqdm import tqdm

    predictors: dict[str, Predict] = {**(baselines or {}), "simpleshot": simpleshot_predict}
    predictors |= {name: head_predict(name) for name in config.heads}
    bar = partial(tqdm, desc=progress, disable=progress is None, leave=False, dynamic_ncols=True)
    ks = config.shots if shots is None else shots
    return accuracy_rows(pool, pool_y, test, test_y, predictors, ks, config.seeds, precision, bar)


def fit_times(
    pool: np.ndarray,
    pool_y: np.ndarray,
    config: FewShotBenchConfig,
    baselines: dict[str, Callable[[np.ndarray, np.ndarray], object]] | None = None,
) -> list[FitTime]:
    """Head fit time vs N enrolled samples (same features); ``baselines`` are other fits timed alike."""
    rows = []
    n_classes = len(np.unique(pool_y))
    smallest = int(np.bincount(np.unique(pool_y, return_inverse=True)[1]).min())
    for n in config.fit_sizes:
        per_class = max(1, n // n_classes)
        if per_class > min(config.pool_per_class, smallest):
            continue
        idx = episode(pool_y, per_class, seed=0)
        x, y = pool[idx], pool_y[idx]
        fits: dict[str, Callable[[], object]] = {name: partial(_fit, name, x, y) for name in config.heads}
        fits |= {name: partial(fit, x, y) for name, fit in (baselines or {}).items()}
        for name, fit in fits.items():
            runs = 10 if name == "logistic" or name in (baselines or {}) else 50
            stats = measure(fit, runs=runs, warmup=2, max_seconds=5.0)
            rows.append(FitTime(name, len(idx), stats.p50_ms, stats.mean_ms, stats.runs))
    return rows


def _fit(name: str, x: np.ndarray, y: np.ndarray) -> object:
    from edgetl_runtime.heads import create_head

    return create_head(name).fit(x, y)


def bundle_features(
    bundle: Path, precision: str, images: list[np.ndarray], threads: int | None, progress: str | None = None
) -> np.ndarray:
    """Features ``(N, D)`` through the device runtime, as a device computes them; ``progress`` names a bar."""
    from tqdm import tqdm

    from edgetl_runtime.learner import Learner

    chunk = 256  # progress granularity only: the extractor batches by its own batch size inside
    with Learner.load(bundle, None, backend="onnxruntime", precision=precision, threads=threads) as learner:
        bar = tqdm(total=len(images), desc=progress, disable=progress is None, leave=False, dynamic_ncols=True)
        parts = []
        for start in range(0, len(images), chunk):
            parts.append(learner.features(images[start : start + chunk]))  # (n, D) float32
            bar.update(len(parts[-1]))
        bar.close()
        return np.concatenate(parts) if parts else learner.features(images)


def drawable_shots(pool: ImageDataset, shots: tuple[int, ...]) -> tuple[tuple[int, ...], list[str]]:
    """The K values every class of ``pool`` can supply, and a note for each one it cannot."""
    counts = pool.class_counts()
    present = counts[counts > 0]
    smallest = int(present.min()) if len(present) else 0
    short = [pool.classes[c] for c, n in enumerate(counts) if 0 < n == smallest]
    keep = tuple(k for k in shots if k <= smallest)
    notes = [
        f"K={k} skipped: class(es) {short[:3]} have only {smallest} training image(s) in the pool"
        for k in shots
        if k > smallest
    ]
    return keep, notes


def run_fewshot_bench(
    bundle: Path,
    train: ImageDataset,
    test: ImageDataset,
    config: FewShotBenchConfig | None = None,
    *,
    baselines: dict[str, Predict] | None = None,
    baseline_fits: dict[str, Callable[[np.ndarray, np.ndarray], object]] | None = None,
) -> FewShotBenchResult:
    """Accuracy vs K per precision and head, fit time vs N; writes JSON, CSV and a PNG after each precision.

    Raises:
        DatasetError: no K of ``config.shots`` can be drawn from ``train`` for every class, or ``test`` is empty.
    """
    config = config or FewShotBenchConfig()
    pool = balanced_subset(train, config.pool_per_class, seed=1234)
    test = test.subset(np.arange(min(config.test_count, len(test))))
    shots, notes = drawable_shots(pool, config.shots)
    if not shots or not len(test):
        raise DatasetError(
            f"Nothing to measure: {'; '.join(notes) or 'the test split is empty'}. Fix: add images per class, "
            f"or lower --shots (the pool holds {int(pool.class_counts().min())} per class at least)."
        )
    shipped = [p.value for p in Bundle.open(bundle).manifest.precisions]
    precisions = [p for p in config.precisions if p in shipped]
    notes += [f"{p} skipped: the bundle ships {', '.join(shipped)}" for p in config.precisions if p not in shipped]
    if not precisions:
        raise DatasetError(f"{bundle} ships {', '.join(shipped)}; pass --precisions among those.")
    result = FewShotBenchResult(config, str(bundle), notes=notes)
    stem = config.output_dir / f"fewshot_{Path(bundle).stem}"
    for precision in precisions:
        start = time.perf_counter()
        feats = bundle_features(bundle, precision, list(pool.images) + list(test.images), config.threads)
        result.feature_seconds[precision] = round(time.perf_counter() - start, 1)
        p, t = feats[: len(pool)], feats[len(pool) :]
        result.accuracy += accuracy_table(p, pool.labels, t, test.labels, config, None, precision, baselines, shots)
        if precision == precisions[0]:
            result.fit_times = fit_times(p, pool.labels, config, baseline_fits)
        result.summary = summarise(result.accuracy)
        write_outputs(result, stem)  # after each precision: what was measured survives a later failure
    return result


def write_outputs(result: FewShotBenchResult, stem: Path) -> None:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    with stem.with_suffix(".csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["precision", "head", "shots", "seed", "accuracy"])
        writer.writeheader()
        writer.writerows(asdict(r) for r in result.accuracy)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key, by_k in result.summary.items():
        ks = [int(k.split("=")[1]) for k in by_k]
        left.plot(ks, list(by_k.values()), marker="o", linestyle="-" if key.startswith("fp32") else "--", label=key)
    left.set(xscale="log", xlabel="shots per class (K)", ylabel="test accuracy (%)", title="Few-shot accuracy")
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    for head in sorted({r.head for r in result.fit_times}):
        pts = [r for r in result.fit_times if r.head == head]
        right.plot([r.n for r in pts], [r.p50_ms for r in pts], marker="o", label=head)
    right.set(
        xscale="log", yscale="log", xlabel="enrolled samples N", ylabel="fit time p50 (ms)", title="Head fit time"
    )
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=120)
    plt.close(fig)
