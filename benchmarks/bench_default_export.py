"""What a plain ``edgetl export`` delivers on the machine that runs this: size, accuracy, speed of int8.

For each input size: the default export of the bundled EfficientNet-Lite0 (``portable`` int8, default
pooling and crop, Fashion-MNIST calibration), then through the device runtime on this CPU:

- few-shot accuracy of the ``auto`` head and scikit-learn's LogisticRegression, fp32 and int8, on the
  same episodes (K shots per class from a 100-per-class train pool, the first N t10k images scored);
- the paired 5-shot int8 drop (fp32 - int8, per seed) and the int8 / fp32 member size;
- ``auto`` fit time against LogisticRegression on the same 10 x 5 features (round-robin, 1 BLAS thread);
- batch-1 latency of fp32 and int8 (calls alternating, 1 thread and the default), int8 under the kernel
  the runtime chose here, and what ``precision="best"`` picks.

Usage::

    .venv/bin/python benchmarks/bench_default_export.py --sizes 96,224 --out runs/bench/default_export.json

Every figure is printed beside the CPU's model, family and ISA flags: rerun it on the device you care about.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from sklearn_baseline import BASELINES
from threadpoolctl import threadpool_limits

from edgetl.bench.fewshot import FewShotBenchConfig, accuracy_table, bundle_features, episode, summarise
from edgetl.datasets import balanced_subset, load_fashion_mnist
from edgetl.export import BundleConfig, export_bundle
from edgetl_runtime.backends import select_backend
from edgetl_runtime.backends.choice_cache import ChoiceCache
from edgetl_runtime.backends.cpu import this_cpu
from edgetl_runtime.bundle.manifest import Precision
from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.heads import create_head
from edgetl_runtime.measure.latency import measure_interleaved
from edgetl_runtime.preprocess import preprocess_batch


def fewshot(bundle: Path, args: argparse.Namespace) -> dict[str, Any]:
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    pool = balanced_subset(train, 100, seed=1234)
    test = test.subset(np.arange(args.test_count))
    protocol = FewShotBenchConfig(shots=(1, 5), seeds=args.seeds, test_count=args.test_count, heads=("auto",))
    rows, feats = [], {}
    for precision in ("fp32", "int8"):
        f = bundle_features(bundle, precision, list(pool.images) + list(test.images), args.threads)
        feats[precision] = f[: len(pool)]
        table = accuracy_table(f[: len(pool)], pool.labels, f[len(pool) :], test.labels, protocol, baselines=BASELINES)
        rows += [{"precision": precision, **r} for r in table if r["head"] in {"auto", "sklearn_lr"}]
    drops = [
        100 * (a["accuracy"] - b["accuracy"])
        for a in rows
        for b in rows
        if a["precision"] == "fp32" and b["precision"] == "int8" and a["head"] == b["head"] == "auto"
        and a["shots"] == b["shots"] == 5 and a["seed"] == b["seed"]
    ]  # fmt: skip
    return {"summary": summarise(rows), "int8_drop_5shot_auto": float(np.mean(drops)), "drops": drops,
            "fit": fit_speed(feats["fp32"], pool.labels), "feature_dim": int(feats["fp32"].shape[1])}  # fmt: skip


def fit_speed(pool: np.ndarray, labels: np.ndarray, rounds: int = 20) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    idx = episode(labels, 5, seed=0)
    x, y = pool[idx], labels[idx]
    calls = {
        "auto": lambda: create_head("auto").fit(x, y).predict_proba(x[:1]),
        "sklearn_lr": lambda: LogisticRegression(max_iter=1000).fit(x, y),
    }
    with threadpool_limits(1, "blas"):
        stats = measure_interleaved(calls, rounds=rounds, calls_per_round={"auto": 10, "sklearn_lr": 1})
    return {k: v.p50_ms for k, v in stats.items()} | {"speedup": stats["sklearn_lr"].p50_ms / stats["auto"].p50_ms}


def latency(bundle: Path, rounds: int) -> dict[str, Any]:
    opened = Bundle.open(bundle)
    image = preprocess_batch([load_fashion_mnist("test").images[0]], opened.manifest.preprocess)
    out = {}
    for threads in (1, None):
        built = {p: select_backend(opened, "onnxruntime", p, threads=threads) for p in ("fp32", "int8")}
        stats = measure_interleaved({p: partial(b.run, image) for p, (b, _) in built.items()}, rounds=rounds)
        with tempfile.TemporaryDirectory() as tmp:
            _, best = select_backend(opened, "onnxruntime", "best", threads=threads, cache=ChoiceCache(Path(tmp)))
        out[f"threads={threads or 'default'}"] = {
            "fp32_ms": stats["fp32"].p50_ms,
            "int8_ms": stats["int8"].p50_ms,
            "ratio": stats["int8"].p50_ms / stats["fp32"].p50_ms,
            "int8_kernel": built["int8"][1].kernel,
            "best": best.precision,
            "best_reason": best.reason,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="96,224", help="comma list of input sizes")
    parser.add_argument("--test-count", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads for the features")
    parser.add_argument("--latency-rounds", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/default_export.json"))
    args = parser.parse_args()
    cpu = this_cpu()
    result: dict[str, Any] = {"cpu": cpu.to_dict(), "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            path = Path(tmp) / f"default-{size}.edgetl"
            export_bundle("tf_efficientnet_lite0", path, data=load_fashion_mnist("train"), image_size=size,
                          config=BundleConfig())  # fmt: skip
            manifest = Bundle.open(path).manifest
            sizes = {p: manifest.members[p.member].size for p in (Precision.FP32, Precision.INT8)}
            result["sizes"][size] = {
                "pooling": manifest.backbone.pooling,
                "crop_pct": manifest.preprocess.crop_pct,
                "int8_size_ratio": sizes[Precision.INT8] / sizes[Precision.FP32],
                "guard": manifest.quantization.get("guard"),
                **fewshot(path, args),
                "latency": latency(path, args.latency_rounds),
            }
    print(f"cpu: {cpu.describe()}")
    for size, r in result["sizes"].items():
        s = r["summary"]
        print(f"\n{size} px, pooling {r['pooling']}, crop {r['crop_pct']}, D = {r['feature_dim']}")
        print(
            f"  int8 size / fp32: {r['int8_size_ratio']:.3f}; "
            f"5-shot auto drop (fp32 - int8): {r['int8_drop_5shot_auto']:+.2f} points"
        )
        for key in ("fp32/auto", "int8/auto", "fp32/sklearn_lr"):
            print(f"  {key:<16} K=1 {s[key]['K=1']:.1f}  K=5 {s[key]['K=5']:.1f}")
        f = r["fit"]
        print(f"  fit 10x5: auto {f['auto']:.2f} ms, sklearn LR {f['sklearn_lr']:.1f} ms -> {f['speedup']:.0f}x")
        for key, lat in r["latency"].items():
            print(f"  latency {key}: int8 {lat['int8_ms']:.2f} / fp32 {lat['fp32_ms']:.2f} ms = {lat['ratio']:.3f} "
                  f"(int8 kernel {lat['int8_kernel']}); best -> {lat['best']}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
