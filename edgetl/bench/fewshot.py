"""``edgetl bench fewshot``: accuracy vs K for every head beside scikit-learn and SimpleShot, on bundle features.

Features come from the bundle through the device runtime (onnxruntime), once per precision, so the
fp32 vs int8 comparison is exactly what a device would see. The protocol: a fixed class-balanced
pool of train images, K shots per class drawn per seed, a fixed test set; the same episodes for
every head. scikit-learn is a benchmark dependency only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.datasets import ImageDataset, balanced_subset
from edgetl_runtime.errors import ConfigError, raise_all
from edgetl_runtime.fewshot import episode
from edgetl_runtime.latency import measure

HEADS = ("auto", "ridge", "ncm", "logistic")
BASELINES = ("sklearn_lr", "simpleshot")


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


def simpleshot_predict(x: np.ndarray, y: np.ndarray, xt: np.ndarray) -> np.ndarray:
    """SimpleShot as published: centre on the enrolled mean, L2-normalise (CL2N), nearest class mean."""
    mu = x.mean(axis=0)

    def cl2n(a: np.ndarray) -> np.ndarray:
        return (a - mu) / np.linalg.norm(a - mu, axis=1, keepdims=True)

    classes = np.unique(y)
    protos = np.stack([cl2n(x)[y == c].mean(axis=0) for c in classes])
    return classes[np.argmax(cl2n(xt) @ protos.T, axis=1)]


def sklearn_lr_predict(x: np.ndarray, y: np.ndarray, xt: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=1000).fit(x, y).predict(xt)


def _predictors(heads: tuple[str, ...]) -> dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]]:
    from edgetl_runtime.heads import create_head

    out: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
        "sklearn_lr": sklearn_lr_predict,
        "simpleshot": simpleshot_predict,
    }
    for name in heads:
        out[name] = lambda x, y, xt, name=name: create_head(name).fit(x, y).predict(xt)
    return out


def accuracy_table(
    pool: np.ndarray,
    pool_y: np.ndarray,
    test: np.ndarray,
    test_y: np.ndarray,
    config: FewShotBenchConfig,
    progress: str | None = None,
) -> list[dict[str, Any]]:
    """One row per (head, K, seed) with the test accuracy; ``progress`` names a progress bar over episodes."""
    from tqdm import tqdm

    predictors = _predictors(config.heads)
    rows = []
    episodes = [(shots, seed) for shots in config.shots for seed in range(config.seeds)]
    for shots, seed in tqdm(episodes, desc=progress, disable=progress is None, leave=False, dynamic_ncols=True):
        idx = episode(pool_y, shots, seed)
        for name, predict in predictors.items():
            accuracy = float(np.mean(predict(pool[idx], pool_y[idx], test) == test_y))
            rows.append({"head": name, "shots": shots, "seed": seed, "accuracy": accuracy})
    return rows


def fit_times(pool: np.ndarray, pool_y: np.ndarray, config: FewShotBenchConfig) -> list[dict[str, Any]]:
    """Head fit time vs N enrolled samples (same features), against scikit-learn's LogisticRegression."""
    from sklearn.linear_model import LogisticRegression

    from edgetl_runtime.heads import create_head

    rows = []
    n_classes = len(np.unique(pool_y))
    for n in config.fit_sizes:
        per_class = max(1, n // n_classes)
        if per_class > config.pool_per_class:
            continue
        idx = episode(pool_y, per_class, seed=0)
        x, y = pool[idx], pool_y[idx]
        fits: dict[str, Callable[[], object]] = {
            name: (lambda name=name, x=x, y=y: create_head(name).fit(x, y)) for name in config.heads
        }
        fits["sklearn_lr"] = lambda x=x, y=y: LogisticRegression(max_iter=1000).fit(x, y)
        for name, fit in fits.items():
            runs = 10 if name in {"sklearn_lr", "logistic"} else 50
            stats = measure(fit, runs=runs, warmup=2, max_seconds=5.0)
            rows.append(
                {"head": name, "n": len(idx), "p50_ms": stats.p50_ms, "mean_ms": stats.mean_ms, "runs": stats.runs}
            )
    return rows


def bundle_features(
    bundle: Path, precision: str, images: list[np.ndarray], threads: int | None, progress: str | None = None
) -> np.ndarray:
    """Features through the device runtime, as a device computes them; ``progress`` names a progress bar."""
    from tqdm import tqdm

    from edgetl_runtime.learner import Learner

    chunk = 256  # progress granularity only: the extractor batches by its own batch size inside
    starts = range(0, len(images), chunk)
    with Learner.load(bundle, None, backend="onnxruntime", precision=precision, threads=threads) as learner:
        bar = tqdm(total=len(images), desc=progress, disable=progress is None, leave=False, dynamic_ncols=True)
        parts = []
        for start in starts:
            parts.append(learner.features(images[start : start + chunk]))  # (n, D) float32
            bar.update(len(parts[-1]))
        bar.close()
        return np.concatenate(parts) if parts else learner.features(images)


def run_fewshot_bench(
    bundle: Path, train: ImageDataset, test: ImageDataset, config: FewShotBenchConfig | None = None
) -> dict[str, Any]:
    """Accuracy vs K per precision and head, fit time vs N; writes JSON, CSV and a PNG."""
    config = config or FewShotBenchConfig()
    pool = balanced_subset(train, config.pool_per_class, seed=1234)
    test = test.subset(np.arange(min(config.test_count, len(test))))
    result: dict[str, Any] = {"config": {**asdict(config), "output_dir": str(config.output_dir)}, "bundle": str(bundle)}
    result["accuracy"], result["feature_seconds"] = [], {}
    for precision in config.precisions:
        start = time.perf_counter()
        feats = bundle_features(bundle, precision, list(pool.images) + list(test.images), config.threads)
        result["feature_seconds"][precision] = round(time.perf_counter() - start, 1)
        p, t = feats[: len(pool)], feats[len(pool) :]
        for row in accuracy_table(p, pool.labels, t, test.labels, config):
            result["accuracy"].append({"precision": precision, **row})
        if precision == config.precisions[0]:
            result["fit_times"] = fit_times(p, pool.labels, config)
    result["summary"] = summarise(result["accuracy"])
    write_outputs(result, config.output_dir / f"fewshot_{Path(bundle).stem}")
    return result


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean accuracy (%) per "precision/head" and K."""
    out: dict[str, dict[str, float]] = {}
    keys = dict.fromkeys((r["precision"], r["head"]) for r in rows)
    for precision, head in keys:
        by_k = out.setdefault(f"{precision}/{head}", {})
        for shots in sorted({r["shots"] for r in rows}):
            accs = [r["accuracy"] for r in rows if (r["precision"], r["head"], r["shots"]) == (precision, head, shots)]
            by_k[f"K={shots}"] = 100 * float(np.mean(accs))  # unrounded: targets compare it
    return out


def write_outputs(result: dict[str, Any], stem: Path) -> None:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
    with stem.with_suffix(".csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["precision", "head", "shots", "seed", "accuracy"])
        writer.writeheader()
        writer.writerows(result["accuracy"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key, by_k in result["summary"].items():
        ks = [int(k.split("=")[1]) for k in by_k]
        left.plot(ks, list(by_k.values()), marker="o", linestyle="-" if key.startswith("fp32") else "--", label=key)
    left.set(xscale="log", xlabel="shots per class (K)", ylabel="test accuracy (%)", title="Few-shot accuracy")
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    for head in sorted({r["head"] for r in result.get("fit_times", [])}):
        pts = [r for r in result["fit_times"] if r["head"] == head]
        right.plot([r["n"] for r in pts], [r["p50_ms"] for r in pts], marker="o", label=head)
    right.set(
        xscale="log", yscale="log", xlabel="enrolled samples N", ylabel="fit time p50 (ms)", title="Head fit time"
    )
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=120)
    plt.close(fig)
