"""Choose the exported pooling and crop on training images only, then never touch the choice again.

The few-shot target is scored on the first 2000 Fashion-MNIST t10k images; choosing the pooling (avg,
a k x k grid, or both) and ``crop_pct`` on those same images would flatter the result. This script
makes the choice by validation inside the *train* split: for each candidate it enrols K shots per
class from a fixed 100-per-class train pool (drawn like bench_heads'; episodes via ``episode()``) and scores the
``auto`` head on the pool images that were not enrolled. The winner is the candidate with the best
mean validation accuracy over K = 1/5/10/20; ``edgetl bench fewshot`` then reports it on test.

Usage::

    .venv/bin/python benchmarks/select_pooling.py --cache .cache/features --out runs/bench/select_pooling.json

Feature maps come from the bundled EfficientNet-Lite0 at 224 (torch, cached as float16 ``.npy``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import numpy as np  # noqa: E402
from head_features import SEEDS, SHOTS, extract_fmaps, load_fashion_mnist, pooled_features, stratified_pool  # noqa: E402

from edgetl_runtime.fewshot import episode  # noqa: E402
from edgetl_runtime.heads import AutoHead  # noqa: E402

CROPS = (0.875, 1.0)
CONFIGS = ("1", "2", "3", "4")  # "1" is global average pooling (1280-d), "4" a 4x4 grid: edgetl's exportable set


def pool_fmaps(cache: Path, crop_pct: float, pool_per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Final 7x7 maps of the fixed train pool at ``crop_pct`` (shared with bench_heads' fmap cache)."""
    stem = cache / f"fmnist_lite0_224_crop{crop_pct:g}_pool{pool_per_class}_test2000_fmap"
    tr_x, tr_y = load_fashion_mnist("train")
    idx = stratified_pool(tr_y, pool_per_class)
    path = Path(f"{stem}_pool.npy")
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"extracting the train pool at crop_pct={crop_pct}: {len(idx)} images", flush=True)
        np.save(f"{path}.tmp.npy", extract_fmaps(np.ascontiguousarray(tr_x[idx]), crop_pct))
        os.replace(f"{path}.tmp.npy", path)
    return np.load(path, mmap_mode="r"), tr_y[idx]


def validation_accuracy(features: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    """Mean accuracy per K of ``auto`` enrolled on pool episodes and scored on the rest of the pool."""
    out: dict[int, float] = {}
    for shots in SHOTS:
        accs = []
        for seed in SEEDS:
            enrolled = episode(labels, shots, seed)
            held_out = np.setdiff1d(np.arange(len(labels)), enrolled)
            head = AutoHead().fit(features[enrolled], labels[enrolled])
            accs.append(float((head.predict(features[held_out]) == labels[held_out]).mean()))
        out[shots] = 100 * float(np.mean(accs))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path(".cache/features"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench/select_pooling.json"))
    parser.add_argument("--pool-per-class", type=int, default=100)
    args = parser.parse_args()
    rows = []
    for crop in CROPS:
        fmaps, labels = pool_fmaps(args.cache, crop, args.pool_per_class)
        for config in CONFIGS:
            feats = pooled_features(np.asarray(fmaps), config)
            acc = validation_accuracy(feats, labels)
            rows.append({"crop_pct": crop, "pooling": config, "dim": feats.shape[1], "val_acc": acc})
            print(
                f"crop {crop:<5} pooling {config:<4} D={feats.shape[1]:<6} "
                + "  ".join(f"K={k} {v:5.1f}" for k, v in acc.items())
                + f"  mean {np.mean(list(acc.values())):5.2f}",
                flush=True,
            )
    best = max(rows, key=lambda r: np.mean(list(r["val_acc"].values())))
    result = {"protocol": __doc__.split("\n\n")[1], "candidates": rows, "chosen": best}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"chosen on train-only validation: crop_pct={best['crop_pct']} pooling={best['pooling']}")


if __name__ == "__main__":
    main()
