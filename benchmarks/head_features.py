"""The data and features bench_heads.py and select_pooling.py score: a fixed Fashion-MNIST pool, EfficientNet-Lite0
pooled features and final feature maps (torch + timm, run once and cached as .npz / .npy), and numpy grid pooling.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

LAYERS = ("b4", "b5", "b6")  # pooled outputs of blocks[4..6] (112, 192, 320 channels)
SHOTS = (1, 5, 10, 20)
SEEDS = (0, 1, 2, 3, 4)


def load_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``split`` in {"train", "t10k"} -> images (N, 28, 28) uint8, labels (N,) int64."""
    from edgetl.datasets import load_fashion_mnist as load

    data = load("train" if split == "train" else "test")
    return np.asarray(data.images), data.labels


def stratified_pool(labels: np.ndarray, per_class: int, seed: int = 1234) -> np.ndarray:
    """Indices of ``per_class`` random train images per class (fixed seed), sorted by class."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
    return np.concatenate(picks)


def extract_features(
    images: np.ndarray, batch: int = 64, threads: int = 2, spatial: bool = False
) -> dict[str, np.ndarray]:
    """Pooled final features (N, 1280) and pooled block outputs of ``images`` (N, 28, 28) uint8.

    With ``spatial``, instead: the final map and block 6 average-pooled to a 2x2 grid (``feat_s2``
    (N, 5120), ``b6_s2`` (N, 1280)), to measure what keeping coarse spatial layout would buy.
    """
    import torch
    import torch.nn.functional as F

    from edgetl.backbones import create_backbone
    from edgetl_runtime.preprocess import preprocess_batch

    torch.set_num_threads(threads)
    bb = create_backbone("tf_efficientnet_lite0", weights="bundled")
    captured: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[..., None]:
        def fn(_m: Any, _i: Any, out: torch.Tensor) -> None:
            captured[name] = F.adaptive_avg_pool2d(out, 2).flatten(1) if spatial else out.mean(dim=(2, 3))

        return fn

    for i, name in zip((4, 5, 6), LAYERS, strict=True):
        bb.model.blocks[i].register_forward_hook(hook(name))
    names = ("feat_s2", "b6_s2") if spatial else ("feat", *LAYERS)
    out: dict[str, list[np.ndarray]] = {k: [] for k in names}
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(images), batch):
            x = torch.from_numpy(preprocess_batch(list(images[s : s + batch]), bb.spec))
            fmap = bb.model.forward_features(x)  # (n, 1280, 7, 7)
            out[names[0]].append(
                (F.adaptive_avg_pool2d(fmap, 2).flatten(1) if spatial else fmap.mean(dim=(2, 3))).numpy()
            )
            for name in names[1:]:
                out[name].append(captured[name.removesuffix("_s2")].numpy())
            print(f"  {s + len(x)}/{len(images)} images, {time.perf_counter() - t0:.0f} s", flush=True)
    return {k: np.concatenate(v).astype(np.float32) for k, v in out.items()}


def build_cache(cache: Path, pool_per_class: int, n_test: int, spatial: bool = False) -> Path:
    """Extract and save features once; returns the ``.npz`` path (reused when it exists).

    ``spatial`` writes a second file with 2x2-pooled maps of the pool and test images (no flips).
    """
    path = cache / f"fmnist_lite0_224_pool{pool_per_class}_test{n_test}{'_spatial' if spatial else ''}.npz"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    tr_x, tr_y = load_fashion_mnist("train")
    te_x, te_y = load_fashion_mnist("t10k")
    idx = stratified_pool(tr_y, pool_per_class)
    arrays: dict[str, np.ndarray] = {"pool_y": tr_y[idx], "pool_idx": idx, "test_y": te_y[:n_test]}
    for prefix, imgs in (("pool", tr_x[idx]), ("test", te_x[:n_test])):
        for suffix, batch in (("", imgs), ("_flip", imgs[:, :, ::-1]))[: 1 if spatial else 2]:
            print(f"extracting {prefix}{suffix}: {len(batch)} images", flush=True)
            for k, v in extract_features(np.ascontiguousarray(batch), spatial=spatial).items():
                arrays[f"{prefix}{suffix}_{k}"] = v
    np.savez(path, **arrays)
    return path


def extract_fmaps(images: np.ndarray, crop_pct: float, batch: int = 64, threads: int = 2) -> np.ndarray:
    """Final feature maps (N, 1280, 7, 7) float16 of ``images`` under the bundled spec with ``crop_pct``."""
    import dataclasses

    import torch

    from edgetl.backbones import create_backbone
    from edgetl_runtime.preprocess import preprocess_batch

    torch.set_num_threads(threads)
    bb = create_backbone("tf_efficientnet_lite0", weights="bundled")
    spec = dataclasses.replace(bb.spec, crop_pct=crop_pct)
    out = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(images), batch):
            x = torch.from_numpy(preprocess_batch(list(images[s : s + batch]), spec))
            out.append(bb.model.forward_features(x).numpy().astype(np.float16))
            print(f"  {s + len(x)}/{len(images)} images, {time.perf_counter() - t0:.0f} s", flush=True)
    return np.concatenate(out)


def build_fmap_cache(cache: Path, pool_per_class: int, n_test: int, crop_pct: float) -> Path:
    """Cache the 7x7 final maps (float16) of pool, test and flipped pool under ``crop_pct``, one file each
    (``<stem>_{pool,test,pool_flip}.npy`` + labels in ``<stem>_meta.npz``); returns the stem.

    Same pool, episodes and test images as the pooled cache, so the numbers compare directly.
    """
    stem = cache / f"fmnist_lite0_224_crop{crop_pct:g}_pool{pool_per_class}_test{n_test}_fmap"
    cache.mkdir(parents=True, exist_ok=True)
    tr_x, tr_y = load_fashion_mnist("train")
    te_x, te_y = load_fashion_mnist("t10k")
    idx = stratified_pool(tr_y, pool_per_class)
    meta = Path(f"{stem}_meta.npz")
    if not meta.exists():
        np.savez(meta, pool_y=tr_y[idx], pool_idx=idx, test_y=te_y[:n_test])
    for name, imgs in (("pool", tr_x[idx]), ("test", te_x[:n_test]), ("pool_flip", tr_x[idx][:, :, ::-1])):
        f = Path(f"{stem}_{name}.npy")
        if f.exists():
            continue
        print(f"extracting {name} (crop_pct={crop_pct}): {len(imgs)} images", flush=True)
        arr = extract_fmaps(np.ascontiguousarray(imgs), crop_pct)
        np.save(f"{f}.tmp.npy", arr)
        os.replace(f"{f}.tmp.npy", f)
    return stem


def grid_pool(fmaps: np.ndarray, grid: int) -> np.ndarray:
    """``torch.nn.functional.adaptive_avg_pool2d(fmaps, grid).flatten(1)`` in numpy: (N, C*grid*grid) float32."""
    n, c, h, w = fmaps.shape
    out = np.empty((n, c, grid, grid), np.float32)
    for i in range(grid):
        r0, r1 = (i * h) // grid, -(-(i + 1) * h // grid)
        for j in range(grid):
            c0, c1 = (j * w) // grid, -(-(j + 1) * w // grid)
            out[:, :, i, j] = fmaps[:, :, r0:r1, c0:c1].astype(np.float32).mean(axis=(2, 3))
    return out.reshape(n, -1)


def pooled_features(fmaps: np.ndarray, config: str) -> np.ndarray:
    """Features of a pooling ``config``: ``"4"`` is the 4x4 average grid; ``"1+2"`` concatenates the 1x1 and
    2x2 grids, each block L1-normalised so that after the heads' sqrt + L2 every block weighs the same."""
    parts = [grid_pool(fmaps, int(g)) for g in config.split("+")]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([b / np.maximum(np.abs(b).sum(1, keepdims=True), 1e-12) for b in parts], 1)


def load_features(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def with_concat(data: dict[str, np.ndarray], parts: list[str]) -> str:
    """Add the L2-normalised concatenation of feature sets ``parts`` to ``data``; returns its key."""
    key = "+".join(parts)
    for prefix in ("pool", "test", "pool_flip"):
        if all(f"{prefix}_{p}" in data for p in parts):
            blocks = [data[f"{prefix}_{p}"] for p in parts]
            data[f"{prefix}_{key}"] = np.concatenate([b / np.linalg.norm(b, axis=1, keepdims=True) for b in blocks], 1)
    return key
