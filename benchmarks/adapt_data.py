"""Features and streams for bench_adapt.py: the default export's features through the runtime, cached as .npz.

Fashion-MNIST: the shots come from a 100-per-class train pool (``balanced_subset(train, 100, seed=1234)``, as
``bench_default_export.py``), the test images are t10k[:1000], and every stream is drawn from t10k[1000:5000],
so the stream and the test images never share an image. Digits (scikit-learn's bundled 8x8 handwritten digits,
upscaled by the runtime's own preprocessing) are the second real-image domain: shots from one half, test images
from the other.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgetl.bench.fewshot import bundle_features
from edgetl.datasets import balanced_subset, load_fashion_mnist

N_TEST = 1000
STREAM_SOURCE = (1000, 5000)  # t10k slice the streams are drawn from (disjoint from the test images)


def export_default(path: Path) -> Path:
    """The bundled Lite0 exported with ``edgetl export`` defaults (224 px, grid3, portable int8, FMNIST calib)."""
    if path.exists():
        return path
    from edgetl.export import BundleConfig, export_bundle

    path.parent.mkdir(parents=True, exist_ok=True)
    export_bundle("tf_efficientnet_lite0", path, data=load_fashion_mnist("train"), config=BundleConfig())
    return path


def fmnist_features(bundle: Path, precision: str, cache: Path, threads: int | None = None) -> dict[str, np.ndarray]:
    """``pool``/``pool_y``, ``test``/``test_y``, ``stream``/``stream_y`` features of one precision (cached)."""
    path = cache / f"fmnist_{bundle.stem}_{precision}.npz"
    if not path.exists():
        train, t10k = load_fashion_mnist("train"), load_fashion_mnist("test")
        pool = balanced_subset(train, 100, seed=1234)
        lo, hi = STREAM_SOURCE
        images = list(pool.images) + list(t10k.images[:N_TEST]) + list(t10k.images[lo:hi])
        start = time.perf_counter()
        feats = bundle_features(bundle, precision, images, threads)
        print(f"  {precision}: {len(images)} images in {time.perf_counter() - start:.0f} s", flush=True)
        n_pool = len(pool)
        arrays = {
            "pool": feats[:n_pool],
            "pool_y": pool.labels,
            "test": feats[n_pool : n_pool + N_TEST],
            "test_y": t10k.labels[:N_TEST],
            "stream": feats[n_pool + N_TEST :],
            "stream_y": t10k.labels[lo:hi],
        }
        _save(path, arrays)
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def digits_features(bundle: Path, precision: str, cache: Path, threads: int | None = None) -> dict[str, np.ndarray]:
    """scikit-learn's bundled digits (1797 8x8 images, 10 classes): ``pool`` = first half, ``test`` = second."""
    path = cache / f"digits_{bundle.stem}_{precision}.npz"
    if not path.exists():
        from sklearn.datasets import load_digits

        digits = load_digits()
        gray = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)  # (N, 8, 8) 0..16 -> 0..255
        images = [np.repeat(g[:, :, None], 3, axis=2) for g in gray]
        feats = bundle_features(bundle, precision, images, threads)
        half = len(images) // 2
        labels = digits.target.astype(np.int64)
        _save(path, {"pool": feats[:half], "pool_y": labels[:half], "test": feats[half:], "test_y": labels[half:]})
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


# ---------------------------------------------------------------- streams


def balanced_stream(y: np.ndarray, n: int, rng: np.random.Generator, classes: np.ndarray) -> np.ndarray:
    """``n`` stream indices, the same count from each of ``classes``."""
    per = n // len(classes)
    return np.concatenate([rng.choice(np.flatnonzero(y == c), per, replace=False) for c in classes])


def zipf_stream(y: np.ndarray, n: int, rng: np.random.Generator, classes: np.ndarray) -> np.ndarray:
    """Zipf-like class counts (1/rank, random class order): the most frequent class has ``len(classes)``x the
    rarest (10x for 10 classes)."""
    order = rng.permutation(classes)
    weights = 1.0 / np.arange(1, len(order) + 1)
    counts = np.maximum(1, np.round(n * weights / weights.sum())).astype(int)
    return np.concatenate(
        [
            rng.choice(np.flatnonzero(y == c), min(k, int((y == c).sum())), replace=False)
            for c, k in zip(order, counts, strict=True)
        ]
    )


def open_stream(
    y: np.ndarray, n: int, rng: np.random.Generator, known: np.ndarray, unknown: np.ndarray, frac: float
) -> np.ndarray:
    """``n`` images, a fraction ``frac`` of them from ``unknown`` classes (never enrolled), balanced within each."""
    n_unknown = int(round(n * frac))
    parts = [balanced_stream(y, n - n_unknown, rng, known)]
    if len(unknown):
        parts.append(balanced_stream(y, n_unknown, rng, unknown))
    return np.concatenate(parts)


def drifting_stream(y: np.ndarray, n: int, rng: np.random.Generator, classes: np.ndarray) -> np.ndarray:
    """What a cache holds after the scene drifted: class proportions shift linearly over time from the first
    half of ``classes`` to the second (early images mostly A, late mostly B); only the latest ``n`` are kept,
    so the cache is tilted toward B (3:1)."""
    half = len(classes) // 2
    a, b = classes[:half], classes[half:]
    t = np.linspace(0.5, 1.0, n)  # the kept window: second half of the drift
    from_b = rng.random(n) < t
    picks = []
    pools = {c: list(rng.permutation(np.flatnonzero(y == c))) for c in classes}
    for use_b in from_b:
        group = b if use_b else a
        c = group[rng.integers(len(group))]
        if pools[c]:
            picks.append(pools[c].pop())
    return np.asarray(picks, dtype=np.int64)
