"""The targets run: every export and runtime target measured in one run, judged in one report.

The figures the issues ask for (int8 size, int8 accuracy cost, int8 speed-up, few-shot accuracy,
head fit speed, enrolment cost) used to come from four scripts run at different times. Here one
process exports the bundles once, computes each image set's features once per precision through
the device runtime (onnxruntime, as a device does) and reuses those arrays for every accuracy
target; the timing parts run afterwards, one at a time, with nothing else running in the process.
The protocol lives in :mod:`targets.protocol`, judging in :mod:`targets.judge`, report writing in
:mod:`targets.writer`; ``python benchmarks/bench_targets.py`` (``make targets``) runs it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn_baseline import BASELINES

from edgetl.bench.fewshot import FewShotBenchConfig, accuracy_table, bundle_features
from edgetl.datasets import ImageDataset, balanced_subset, load_fashion_mnist
from edgetl_runtime._optional import require
from edgetl_runtime.fewshot import episode, summarise
from edgetl_runtime.measure.latency import measure_interleaved

from .enrol import enrol_one_latency
from .protocol import DROP_HEADS, DROP_SHOTS, ENROL_HEADS, EXTRA_VERSIONS, FIT_HEADS, POOL_SEED, TargetsConfig

if TYPE_CHECKING:
    from edgetl_runtime.bundle.reader import Bundle


def run_targets(config: TargetsConfig | None = None) -> dict[str, Any]:
    """Export, extract features once, measure every target, judge them, write the reports.

    Returns the raw result (also in ``targets.json``) with ``targets`` (one judged row per target)
    and ``files`` (what was written).
    """
    from .judge import judge
    from .writer import write_report

    config = config or TargetsConfig()
    require("sklearn", "the targets run (the scikit-learn baselines)")
    require("threadpoolctl", "the targets run (one BLAS thread while timing)")
    result: dict[str, Any] = {"config": config.to_dict(), "command": config.command(), "seconds": {}}
    result["load_average_start"], start = list(os.getloadavg()), time.perf_counter()
    pool, test = load_pool(config), load_test(config)
    with _step(result, "export", config):
        bundles = export_bundles(config)
    with _step(result, "features", config):
        feats = extract_features(bundles, pool, test, config)
    result["bundles"] = {name: str(path) for name, path in bundles.items()}
    result["size"] = measure_size(bundles["fewshot"])
    with _step(result, "fewshot", config):
        result["fewshot"] = measure_fewshot(feats, pool.labels, test.labels, config)
    result["int8_drop"] = {head: paired_drop(result["fewshot"]["rows"], head) for head in DROP_HEADS}
    feats = {"avg": feats["avg"]}  # the wide grid-pooled arrays are done with; free them before timing
    with _step(result, "latency", config):
        opened, batch = _latency_input(bundles["fewshot"], test.images[0])
        result["latency"] = measure_latency(opened, batch, config)
    with _step(result, "conv_profile", config):
        result["conv_profile"] = profile_convolutions(opened, batch, config)
    with _step(result, "fit", config):
        result["fit"] = measure_fit(feats["avg"], pool.labels, test.labels, config)
    with _step(result, "enrol", config):
        result["enrol"] = measure_enrol(bundles["avg"], pool, feats["avg"][0], config)
    result["seconds"]["total"] = round(time.perf_counter() - start, 1)
    result["environment"] = targets_environment(config, result)
    result["targets"] = [asdict(row) for row in judge(result)]
    result["files"] = {kind: str(path) for kind, path in write_report(result, config.output_dir).items()}
    return result


@contextlib.contextmanager
def _step(result: dict[str, Any], name: str, config: TargetsConfig) -> Iterator[None]:
    """Announce a step (the long ones show their own progress bar) and record its wall time."""
    if config.progress:
        print(f"[targets] {name} ...", file=sys.stderr, flush=True)
    gc.collect()  # garbage of the previous step is not collected in the middle of a timed one
    start = time.perf_counter()
    yield
    result["seconds"][name] = round(time.perf_counter() - start, 1)


def load_pool(config: TargetsConfig) -> ImageDataset:
    """The enrolment pool: ``pool_per_class`` Fashion-MNIST train images per class, fixed seed."""
    return balanced_subset(load_fashion_mnist("train"), config.pool_per_class, seed=POOL_SEED)


def load_test(config: TargetsConfig) -> ImageDataset:
    """The fixed test set: the first ``test_count`` t10k images (the same for every target)."""
    return load_fashion_mnist("test").subset(np.arange(config.test_count))


def export_bundles(config: TargetsConfig) -> dict[str, Path]:
    """``fewshot``: fp32 + int8 with ``fewshot_pooling``; ``avg``: fp32, honest 1280-d pooled features.

    Both keep the whole frame (``crop_pct=1.0``) so that pooling is their only difference; one
    backbone object serves both exports.
    """
    from edgetl.backbones import create_backbone
    from edgetl.export import BundleConfig, export_bundle
    from edgetl_runtime.bundle.manifest import Precision

    backbone = create_backbone(config.model, config.weights)
    folder = config.output_dir / "bundles"
    stem = f"{config.model}_{config.image_size}_crop1"
    common = BundleConfig(crop_pct=1.0, calibration_count=config.calibration_count, eval_count=config.eval_count)
    configs = {
        "fewshot": replace(common, pooling=config.fewshot_pooling),
        "avg": replace(common, pooling="avg", precisions=(Precision.FP32,)),
    }
    paths = {name: folder / f"{stem}_{name}.edgetl" for name in configs}
    calib = load_fashion_mnist("train")  # the targets are Fashion-MNIST figures: calibrate on its train split
    for name, bundle_config in configs.items():
        export_bundle(backbone, paths[name], data=calib, data_source="fashion-mnist:train", config=bundle_config,
                      image_size=config.image_size)  # fmt: skip
    return paths


def extract_features(
    bundles: dict[str, Path], pool: ImageDataset, test: ImageDataset, config: TargetsConfig
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(pool, test) features per source, each image set computed once: ``fp32``/``int8`` few-shot, ``avg`` fp32."""
    images = list(pool.images) + list(test.images)
    fewshot = bundles["fewshot"]
    sources = {"fp32": (fewshot, "fp32"), "int8": (fewshot, "int8"), "avg": (bundles["avg"], "fp32")}
    out = {}
    for name, (bundle, precision) in sources.items():
        desc = f"features {name} ({len(images)} images)" if config.progress else None
        feats = bundle_features(bundle, precision, images, config.threads, progress=desc)  # (N, D) float32
        out[name] = (feats[: len(pool)], feats[len(pool) :])
    return out


def measure_size(bundle: Path) -> dict[str, Any]:
    """Target 1: member sizes as the manifest records them (what a device downloads)."""
    from edgetl_runtime.bundle.manifest import Precision
    from edgetl_runtime.bundle.reader import Bundle

    manifest = Bundle.open(bundle).manifest
    fp32, int8 = (manifest.members[p.member].size for p in (Precision.FP32, Precision.INT8))
    return {
        "fp32_bytes": fp32,
        "int8_bytes": int8,
        "ratio": int8 / fp32,
        "quantization": manifest.quantization,
        "calibration": manifest.calibration,
    }


def measure_fewshot(
    feats: dict[str, tuple[np.ndarray, np.ndarray]], pool_y: np.ndarray, test_y: np.ndarray, config: TargetsConfig
) -> dict[str, Any]:
    """Target 4 (and 2): the `auto` head, sklearn LR and SimpleShot on the same episodes, fp32 and int8."""
    protocol = FewShotBenchConfig(
        shots=config.shots,
        seeds=config.seeds,
        pool_per_class=config.pool_per_class,
        test_count=config.test_count,
        heads=("auto",),
        output_dir=config.output_dir,
    )
    rows = []
    for precision in ("fp32", "int8"):
        pool, test = feats[precision]
        desc = f"few-shot {precision}" if config.progress else None
        rows += accuracy_table(pool, pool_y, test, test_y, protocol, desc, precision, BASELINES)
    dim = int(feats["fp32"][0].shape[1])
    return {"rows": [asdict(r) for r in rows], "summary": summarise(rows), "feature_dim": dim}


def paired_drop(rows: list[dict[str, Any]], head: str, shots: int = DROP_SHOTS) -> dict[str, Any]:
    """Target 2: fp32 − int8 accuracy in points per seed (same episode for both), and their mean."""
    acc = {(r["precision"], r["seed"]): r["accuracy"] for r in rows if r["head"] == head and r["shots"] == shots}
    seeds = sorted({seed for _, seed in acc})
    per_seed = [100 * (acc[("fp32", s)] - acc[("int8", s)]) for s in seeds]
    return {"shots": shots, "drop_points": float(np.mean(per_seed)), "per_seed": per_seed}


def _latency_input(bundle: Path, image: np.ndarray) -> tuple[Bundle, np.ndarray]:
    """The verified bundle and one real test image preprocessed by its spec, ``(1, 3, S, S)``."""
    from edgetl_runtime.bundle.reader import Bundle
    from edgetl_runtime.preprocess import preprocess_batch

    opened = Bundle.open(bundle)
    return opened, preprocess_batch([image], opened.manifest.preprocess)


def measure_latency(opened: Bundle, batch: np.ndarray, config: TargetsConfig) -> dict[str, Any]:
    """Target 3: batch-1 p50 through the runtime's own backend, fp32 and int8 calls alternating.

    int8 runs under the kernel the runtime chose on this CPU; ``best`` records what a device asking
    for the best precision gets here, and why.
    """
    import tempfile

    from edgetl_runtime.backends import select_backend
    from edgetl_runtime.backends.choice_cache import ChoiceCache

    out: dict[str, Any] = {}
    for threads in dict.fromkeys((1, config.threads)):
        built = {p: select_backend(opened, "onnxruntime", p, threads=threads) for p in ("fp32", "int8")}
        calls = {p: partial(runner.run, batch) for p, (runner, _) in built.items()}
        stats = measure_interleaved(calls, rounds=config.latency_runs, warmup_rounds=config.latency_warmup)
        with tempfile.TemporaryDirectory() as tmp:  # a fresh measurement, not a cached one
            _, best = select_backend(opened, "onnxruntime", "best", threads=threads, cache=ChoiceCache(Path(tmp)))
        out[f"threads_{threads or 'default'}"] = {
            "threads": threads,
            "backend": built["fp32"][0].name,
            "int8_kernel": built["int8"][1].kernel,
            **{p: s.to_dict() for p, s in stats.items()},
            "ratio_p50": stats["int8"].p50_ms / stats["fp32"].p50_ms,
            "best": {"precision": best.precision, "kernel": best.kernel, "reason": best.reason},
        }
    return out


def profile_convolutions(opened: Bundle, batch: np.ndarray, config: TargetsConfig) -> dict[str, Any]:
    """Why target 3 lands where it does: fp32 vs int8 time of every convolution kind (1 thread), under
    the int8 kernel the runtime chose on this CPU."""
    from op_profile import conv_profile

    from edgetl_runtime.backends import select_backend
    from edgetl_runtime.bundle.manifest import Precision
    from edgetl_runtime.errors import EdgeTLError

    kernel = select_backend(opened, "onnxruntime", "int8", threads=1)[1].kernel or "exact"
    fp32, int8 = opened.model_bytes(Precision.FP32), opened.model_bytes(Precision.INT8)
    try:
        return conv_profile(fp32, int8, batch, runs=max(5, config.latency_runs // 4), kernel=kernel).to_dict()
    except EdgeTLError as exc:
        return {"error": str(exc)}


def measure_fit(
    feats: tuple[np.ndarray, np.ndarray], pool_y: np.ndarray, test_y: np.ndarray, config: TargetsConfig
) -> dict[str, Any]:
    """Target 5: accuracy on the test set (all seeds) and fit time (seed 0), edgetl heads vs sklearn LR."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_info, threadpool_limits

    from edgetl_runtime.heads import create_head

    protocol = FewShotBenchConfig(shots=(config.fit_shots,), seeds=config.seeds, heads=FIT_HEADS)
    desc = "fit accuracy" if config.progress else None
    pool, test = feats  # (P, D), (T, D) float32
    rows = accuracy_table(pool, pool_y, test, test_y, protocol, desc, baselines=BASELINES)
    accuracy = {h: 100 * float(np.mean([r.accuracy for r in rows if r.head == h])) for h in ("sklearn_lr", *FIT_HEADS)}
    idx = episode(pool_y, config.fit_shots, seed=0)
    x, y = pool[idx], pool_y[idx]  # (10 * shots, D), (10 * shots,)

    def fit_head(name: str, stage: str) -> object:
        """``fit`` alone; ``ready``: also the predict_proba temperature that ridge otherwise picks on first
        use (sklearn's fit gives probabilities too, so this is the like-for-like time); ``reject``: also
        the unknown-rejection threshold, which sklearn has no counterpart for."""
        head = create_head(name).fit(x, y)
        if stage in ("ready", "reject"):
            _ = getattr(getattr(head, "head_", head), "temperature_", None)
        if stage == "reject":
            _ = head.reject_threshold_
        return head

    fits: dict[str, Any] = {"sklearn_lr": lambda: LogisticRegression(max_iter=1000).fit(x, y)}
    variant_of = {}  # reported beside the judged rows, which are keyed by the head's name (fit + temperature)
    for h in FIT_HEADS:
        fits[h] = partial(fit_head, h, "ready")
        for suffix, stage in (("fit_only", "fit"), ("with_rejection", "reject")):
            fits[f"{h}_{suffix}"], variant_of[f"{h}_{suffix}"] = partial(fit_head, h, stage), h
    calls = {name: 1 if name == "sklearn_lr" else config.fit_calls for name in fits}
    with threadpool_limits(limits=1):  # tiny fits: extra BLAS threads only add contention on a shared box
        blas = [{k: lib.get(k) for k in ("internal_api", "version", "num_threads")} for lib in threadpool_info()]
        stats = measure_interleaved(fits, rounds=config.fit_rounds, calls_per_round=calls, warmup_rounds=1)
    base = stats["sklearn_lr"].p50_ms
    return {
        "samples": len(idx),
        "feature_dim": int(x.shape[1]),
        "accuracy": accuracy,
        "rows": [asdict(r) for r in rows],
        "timing": {h: s.to_dict() for h, s in stats.items()},
        "speedup": {name: base / st.p50_ms for name, st in stats.items() if name != "sklearn_lr"},
        "variant_of": variant_of,
        "blas_during_timing": blas,
    }


def measure_enrol(bundle: Path, pool: ImageDataset, features: np.ndarray, config: TargetsConfig) -> dict[str, Any]:
    """Target 6: one ``Learner.add`` into an N-sample state, features cached, state in memory and in SQLite."""
    from threadpoolctl import threadpool_limits

    images, labels = list(pool.images), [pool.classes[i] for i in pool.labels]
    out = {}
    with tempfile.TemporaryDirectory(prefix="edgetl-targets-") as tmp, threadpool_limits(limits=1):
        for head in ENROL_HEADS:
            for where in ("memory", "sqlite"):
                state = None if where == "memory" else Path(tmp) / f"{head}.sqlite"
                out[f"{head}/{where}"] = enrol_one_latency(
                    bundle,
                    images,
                    labels,
                    head=head,
                    state=state,
                    state_size=config.enrol_state_size,
                    runs=config.enrol_runs,
                    warmup=config.enrol_warmup,
                    precision="fp32",
                    features=features,
                )
    return out


def targets_environment(config: TargetsConfig, result: dict[str, Any]) -> dict[str, Any]:
    """CPU, ISA flags (VNNI), versions and every thread setting the figures depend on."""
    import torch

    from edgetl.bench.latency_report import HOST_DISTRIBUTIONS
    from edgetl_runtime.measure.latency import environment

    return {
        **environment((*HOST_DISTRIBUTIONS, *EXTRA_VERSIONS)),
        "threads": {
            "onnxruntime_features": config.threads or "onnxruntime default (one per physical core)",
            "onnxruntime_latency": [key.removeprefix("threads_") for key in result["latency"]],
            "blas_timed_parts": "1 (threadpoolctl.threadpool_limits around fit and enrolment timing)",
            "blas_during_timing": result["fit"]["blas_during_timing"],
            "blas_environment": {
                v: os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
            },
            "torch_export": torch.get_num_threads(),
        },
        "load_average_start": result["load_average_start"],
        "load_average_end": list(os.getloadavg()),  # 1/5/15-min: what else ran on the machine meanwhile
    }
