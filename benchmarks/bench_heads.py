"""Few-shot heads vs scikit-learn: fit time and Fashion-MNIST few-shot accuracy.

Two parts, both honest about what they use:

1. ``features``: runs the real EfficientNet-Lite0 (ImageNet, bundled weights) at 224 once over a
   stratified Fashion-MNIST pool (``--pool-per-class`` train images per class, plus their horizontal
   flips) and the first ``--n-test`` t10k images (plus flips, only used for the optional test-time
   flip experiment), and caches pooled 1280-d features and pooled intermediate block outputs as
   ``.npz`` under ``--cache``.
2. ``bench``: for K in 1/5/10/20 shots and 5 seeds, draws K enrolled images per class from the pool,
   fits each head on their features (optionally with their flipped copies) and scores the fixed test
   set; times the fits against ``sklearn.linear_model.LogisticRegression(max_iter=1000)``.

Usage::

    .venv/bin/python benchmarks/bench_heads.py --cache .cache/features --out runs/bench_heads

Results go to ``<out>/bench_heads.json`` (+ ``.csv``, ``.png`` when matplotlib is available).
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
LAYERS = ("b4", "b5", "b6")  # pooled outputs of blocks[4..6] (112, 192, 320 channels)
SHOTS = (1, 5, 10, 20)
SEEDS = (0, 1, 2, 3, 4)


# ---------------------------------------------------------------------------------------------
# Data and feature extraction (needs torch + timm; run once, then cached).


def read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def load_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``split`` in {"train", "t10k"} -> images (N, 28, 28) uint8, labels (N,) int64."""
    images = read_idx(DATA_DIR / f"{split}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = read_idx(DATA_DIR / f"{split}-labels-idx1-ubyte.gz", 8).astype(np.int64)
    return images, labels


def stratified_pool(labels: np.ndarray, per_class: int, seed: int = 1234) -> np.ndarray:
    """Indices of ``per_class`` random train images per class (fixed seed), sorted by class."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
    return np.concatenate(picks)


def extract_features(images: np.ndarray, batch: int = 64, threads: int = 2) -> dict[str, np.ndarray]:
    """Pooled final features (N, 1280) and pooled block outputs of ``images`` (N, 28, 28) uint8."""
    import torch

    from edgetl.backbones import create_backbone
    from edgetl_runtime.preprocess import preprocess_batch

    torch.set_num_threads(threads)
    bb = create_backbone("tf_efficientnet_lite0", weights="bundled")
    captured: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[..., None]:
        def fn(_m: Any, _i: Any, out: torch.Tensor) -> None:
            captured[name] = out.mean(dim=(2, 3))

        return fn

    for i, name in zip((4, 5, 6), LAYERS, strict=True):
        bb.model.blocks[i].register_forward_hook(hook(name))
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("feat", *LAYERS)}
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(images), batch):
            x = torch.from_numpy(preprocess_batch(list(images[s : s + batch]), bb.spec))
            out["feat"].append(bb.model(x).numpy())
            for name in LAYERS:
                out[name].append(captured[name].numpy())
            print(f"  {s + len(x)}/{len(images)} images, {time.perf_counter() - t0:.0f} s", flush=True)
    return {k: np.concatenate(v).astype(np.float32) for k, v in out.items()}


def build_cache(cache: Path, pool_per_class: int, n_test: int) -> Path:
    """Extract and save features once; returns the ``.npz`` path (reused when it exists)."""
    path = cache / f"fmnist_lite0_224_pool{pool_per_class}_test{n_test}.npz"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    tr_x, tr_y = load_fashion_mnist("train")
    te_x, te_y = load_fashion_mnist("t10k")
    idx = stratified_pool(tr_y, pool_per_class)
    arrays: dict[str, np.ndarray] = {"pool_y": tr_y[idx], "pool_idx": idx, "test_y": te_y[:n_test]}
    for prefix, imgs in (("pool", tr_x[idx]), ("test", te_x[:n_test])):
        for suffix, batch in (("", imgs), ("_flip", imgs[:, :, ::-1])):
            print(f"extracting {prefix}{suffix}: {len(batch)} images", flush=True)
            for k, v in extract_features(np.ascontiguousarray(batch)).items():
                arrays[f"{prefix}{suffix}_{k}"] = v
    np.savez(path, **arrays)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path(".cache/features"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench_heads"))
    parser.add_argument("--pool-per-class", type=int, default=100)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--extract-only", action="store_true")
    args = parser.parse_args()
    path = build_cache(args.cache, args.pool_per_class, args.n_test)
    print(f"features: {path}")
    if args.extract_only:
        return
    raise SystemExit("bench not written yet")


if __name__ == "__main__":
    main()
