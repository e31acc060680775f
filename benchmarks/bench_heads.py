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
import copy
import csv
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

# One BLAS thread, fixed before numpy loads: few-shot fits are tiny, and on a shared 2-core box extra
# BLAS threads only add contention. Override from the environment to measure otherwise.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from head_features import (  # noqa: E402
    SEEDS,
    SHOTS,
    build_cache,
    build_fmap_cache,
    load_features,
    pooled_features,
    with_concat,
)
from sklearn_baseline import sklearn_lr_predict  # noqa: E402

from edgetl_runtime.fewshot import episode, simpleshot_predict  # noqa: E402
from edgetl_runtime.measure.latency import measure, measure_interleaved  # noqa: E402


def fmap_study(stem: Path, configs: list[str], runs: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Accuracy (auto/ridge, with and without flip enrolment) and 10x5 fit time of each pooling config."""
    meta = load_features(Path(f"{stem}_meta.npz"))
    maps = {k: np.load(f"{stem}_{k}.npy", mmap_mode="r") for k in ("pool", "pool_flip", "test")}
    rows: list[dict[str, Any]] = []
    timing: dict[str, Any] = {}
    for config in configs:
        key = f"{stem.name.split('_pool')[0].removeprefix('fmnist_lite0_224_')}_grid{config}"
        data = {"pool_y": meta["pool_y"], "test_y": meta["test_y"]}
        data.update({f"{k}_{key}": pooled_features(np.asarray(m), config) for k, m in maps.items()})
        rows += accuracy_rows(data, key, heads=("auto", "ridge"))
        idx = episode(meta["pool_y"], 5, 0)
        X, y = data[f"pool_{key}"][idx], meta["pool_y"][idx]
        timing[key] = {"D": X.shape[1]}
        for name, make in edgetl_heads().items():
            if name in ("auto", "ridge"):
                timing[key][name] = timed(lambda make=make, X=X, y=y: make().fit(X, y), runs)
        print(f"[{key}] D={X.shape[1]} fit_10x5 ms: {json.dumps(timing[key])}", flush=True)
    return rows, timing


# Benchmark (numpy heads vs scikit-learn on the cached features; head_features.py computes and caches them).


def edgetl_heads() -> dict[str, Callable[[], Any]]:
    from edgetl_runtime.heads import AutoHead, LogisticHead, NearestClassMean, RidgeHead

    return {"ncm": NearestClassMean, "ridge": RidgeHead, "logistic": LogisticHead, "auto": AutoHead}


def accuracy_rows(data: dict[str, np.ndarray], key: str = "feat", heads: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Test accuracy per (head, K, seed); edgetl heads with and without flip-augmented enrolment."""
    P, PF, T = data[f"pool_{key}"], data.get(f"pool_flip_{key}"), data[f"test_{key}"]
    py, ty = data["pool_y"], data["test_y"]
    factories = {k: v for k, v in edgetl_heads().items() if not heads or k in heads}
    rows: list[dict[str, Any]] = []
    for shots in SHOTS:
        for seed in SEEDS:
            idx = episode(py, shots, seed)
            X, y = P[idx], py[idx]
            preds = (
                {} if heads else {"sklearn_lr": sklearn_lr_predict(X, y, T), "simpleshot": simpleshot_predict(X, y, T)}
            )
            for name, make in factories.items():
                preds[name] = make().fit(X, y).predict(T)
                if PF is not None:  # enrol each image with its mirror image, held out together by LOO
                    Xf, yf, g = np.concatenate([X, PF[idx]]), np.concatenate([y, y]), np.concatenate([idx, idx])
                    preds[f"{name}+flip"] = make().fit(Xf, yf, g).predict(T)
            for name, pred in preds.items():
                rows.append(
                    {"features": key, "head": name, "shots": shots, "seed": seed, "acc": float((pred == ty).mean())}
                )
        summary = {
            r["head"]: round(
                100 * np.mean([q["acc"] for q in rows if q["head"] == r["head"] and q["shots"] == shots]), 1
            )
            for r in rows
        }
        print(f"[{key}] K={shots}: {summary}", flush=True)
    return rows


def timed(fn: Callable[[], Any], runs: int, warmup: int = 3) -> dict[str, float]:
    """Wall-clock statistics of ``fn`` in milliseconds (the runtime's own latency measurement)."""
    stats = measure(fn, runs=runs, warmup=warmup)
    return {
        "runs": stats.runs,
        "min": stats.min_ms,
        "mean": stats.mean_ms,
        "p50": stats.p50_ms,
        "p90": stats.p90_ms,
        "p99": stats.p99_ms,
    }


def timing_rows(data: dict[str, np.ndarray], runs: int, sklearn_runs: int) -> dict[str, Any]:
    """Fit time on 10 classes x 5 shots of real 1280-d features, and one-sample enrolment at 500."""
    from sklearn.linear_model import LogisticRegression

    py = data["pool_y"]
    idx = episode(py, 5, 0)
    X, y = data["pool_feat"][idx], py[idx]
    out: dict[str, Any] = {"fit_10x5": {}, "partial_fit_500_plus_1": {}}
    from edgetl_runtime.heads import RidgeHead

    heads = {**edgetl_heads(), "ridge_fixed": lambda: RidgeHead(alpha=0.3, temperature=0.1)}  # no LOO
    fits = {"sklearn_lr": lambda: LogisticRegression(max_iter=1000).fit(X, y)}
    fits.update({name: (lambda make=make: make().fit(X, y)) for name, make in heads.items()})
    # Round-robin (one sklearn fit, then runs // sklearn_runs fits of each head): machine noise hits all alike.
    per_round = {name: 1 if name == "sklearn_lr" else max(1, runs // sklearn_runs) for name in fits}
    stats = measure_interleaved(fits, rounds=sklearn_runs, calls_per_round=per_round, warmup_rounds=1)
    for name, st in stats.items():
        out["fit_10x5"][name] = {
            "runs": st.runs,
            **{k: getattr(st, f"{k}_ms") for k in ("min", "mean", "p50", "p90", "p99")},
        }
    big = episode(py, 50, 0)  # 500 samples
    Xb, yb, x1 = data["pool_feat"][big], py[big], data["pool_feat"][:1]
    for name, make in heads.items():
        if name == "logistic":
            continue  # no exact incremental update: partial_fit refits
        fitted = make().fit(Xb[:-1], yb[:-1]).partial_fit(Xb[-1:], yb[-1:])  # 500 enrolled, buffers warm
        copies = iter([copy.deepcopy(fitted) for _ in range(runs + 3)])
        out["partial_fit_500_plus_1"][name] = timed(lambda c=copies: next(c).partial_fit(x1, py[:1]), runs)
    return out


def environment() -> dict[str, Any]:
    import sklearn

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
    }


def write_results(out: Path, results: dict[str, Any]) -> None:
    """JSON with everything, CSV of the accuracy rows, PNG of mean accuracy vs shots (if matplotlib)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_heads.json").write_text(json.dumps(results, indent=2))
    rows = results["accuracy"]
    with open(out / "bench_heads.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (feat, head), mean in sorted(summarise(rows).items()):
        ax.plot(SHOTS, [100 * mean[k] for k in SHOTS], marker="o", label=f"{head} [{feat}]")
    ax.set(xlabel="shots per class (K)", ylabel="test accuracy (%)", title="Fashion-MNIST few-shot, EfficientNet-Lite0")
    ax.legend(fontsize=7)
    fig.savefig(out / "bench_heads.png", dpi=120, bbox_inches="tight")


def summarise(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[int, float]]:
    """Mean accuracy over seeds per (features, head) and K."""
    keys = sorted({(r["features"], r["head"]) for r in rows})
    return {
        k: {
            K: float(np.mean([r["acc"] for r in rows if (r["features"], r["head"]) == k and r["shots"] == K]))
            for K in SHOTS
        }
        for k in keys
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path(".cache/features"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench_heads"))
    parser.add_argument("--pool-per-class", type=int, default=100)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--extract-only", action="store_true")
    parser.add_argument("--spatial", action="store_true", help="also extract 2x2-pooled maps (extra-layer study)")
    parser.add_argument("--extra", nargs="*", default=[], help="extra feature sets to score with auto, e.g. feat+b6")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per numpy head")
    parser.add_argument("--sklearn-runs", type=int, default=20)
    parser.add_argument(
        "--fmap-crop-pct",
        type=float,
        default=None,
        help="pooling study instead: cache the 7x7 final maps at this crop_pct, score --fmap-configs, exit",
    )
    parser.add_argument(
        "--fmap-configs", nargs="*", default=["1", "2", "3", "4"], help='grids to pool to; "1+2" concatenates'
    )
    args = parser.parse_args()
    if args.fmap_crop_pct is not None:
        stem = build_fmap_cache(args.cache, args.pool_per_class, args.n_test, args.fmap_crop_pct)
        print(f"fmaps: {stem}")
        if args.extract_only:
            return
        rows, timing = fmap_study(stem, args.fmap_configs, args.runs)
        summary = {
            f"{f}/{h}": {str(k): round(100 * v, 2) for k, v in m.items()} for (f, h), m in summarise(rows).items()
        }
        out = {
            "environment": environment(),
            "fmaps": str(stem),
            "timing_ms": timing,
            "accuracy": rows,
            "summary": summary,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"fmap_crop{args.fmap_crop_pct:g}.json").write_text(json.dumps(out, indent=2))
        print(json.dumps(summary, indent=1))
        return
    path = build_cache(args.cache, args.pool_per_class, args.n_test)
    print(f"features: {path}")
    if args.spatial:
        print(f"spatial features: {build_cache(args.cache, args.pool_per_class, args.n_test, spatial=True)}")
    if args.extract_only:
        return
    data = load_features(path)
    results: dict[str, Any] = {"environment": environment(), "features": str(path)}
    results["timing_ms"] = timing_rows(data, args.runs, args.sklearn_runs)
    print(json.dumps(results["timing_ms"], indent=1), flush=True)
    rows = accuracy_rows(data)
    if args.spatial:
        data.update(
            {
                k: v
                for k, v in load_features(args.cache / path.name.replace(".npz", "_spatial.npz")).items()
                if "_s2" in k
            }
        )
    for extra in args.extra:
        rows += accuracy_rows(data, with_concat(data, extra.split("+")), heads=("auto",))
    results["accuracy"] = rows
    results["summary"] = {
        f"{f}/{h}": {str(k): round(100 * v, 2) for k, v in m.items()} for (f, h), m in summarise(rows).items()
    }
    write_results(args.out, results)
    print(json.dumps(results["summary"], indent=1))


if __name__ == "__main__":
    main()
