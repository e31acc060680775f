"""int8 quantization of EfficientNet-Lite0: file size, Fashion-MNIST few-shot accuracy delta, CPU latency.

Targets: int8 size <= 0.30 x fp32; 5-shot accuracy drop <= 0.5 point (the device's ``auto`` head, the
int8 guard's probe) with the default config; onnxruntime CPU batch-1 p50 latency int8 <= 0.55 x fp32
(2 intra-op threads).

The fp32 model comes from edgetl's exporter (opset 17, dynamic batch, slimmed, parity-checked), bundled
weights; calibration uses the first ``--calib`` Fashion-MNIST *train* images, evaluation the first
``--test`` t10k images, with the same support/query draws for fp32 and int8 (paired delta). Latency
models are timed round-robin in this one process, ``--repeats`` rounds, because the CPU is shared.

Usage::

    .venv/bin/python benchmarks/bench_quantize.py --out runs/bench/quantize.json

Writes the JSON named by ``--out`` and a PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgetl_exporters.quantization import QuantizeConfig
from edgetl_exporters.quantization.core import prepare_fp32, quantize_int8
from edgetl_exporters.quantization.guard import quantize_guarded
from edgetl_exporters.quantization.measure import interleaved_latency, run_features
from edgetl_runtime.fewshot import probe_accuracy, support_masks
from edgetl_runtime.measure.latency import cpu_info
from edgetl_runtime.numerics import row_cosine

CONFIGS = {
    "default": QuantizeConfig,
    "x86_vnni": QuantizeConfig.x86_vnni,
    "percentile": lambda: QuantizeConfig(calibrate_method="percentile", percentile=99.999),
}


def load_fmnist(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` images of ``train`` or ``t10k`` (the package's verified reader)."""
    from edgetl.datasets import load_fashion_mnist

    data = load_fashion_mnist("train" if split == "train" else "test")
    return np.asarray(data.images[:n]), data.labels[:n]


def export_fp32(path: Path, size: int) -> Any:

    from edgetl.backbones import create_backbone
    from edgetl_exporters.onnx_export import export_features_onnx

    bb = create_backbone("tf_efficientnet_lite0", weights="bundled", image_size=size)
    inputs = np.random.default_rng(0).normal(size=(4, 3, size, size)).astype(np.float32)
    export_features_onnx(bb.model, inputs, path)  # the project's exporter: slimmed and parity-checked
    return bb.spec


def environment() -> dict[str, Any]:
    cpu = cpu_info()  # the runtime's CPU probe: model, ISA flags, VNNI
    versions = {}
    for dist in ("onnxruntime", "onnx", "onnxslim", "torch", "timm", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": cpu["model"],
        "machine": cpu["machine"],
        "logical_cpus": cpu["logical_cores"],
        "isa": sorted(flag for flag, present in cpu["isa"].items() if present),
        "vnni": cpu["vnni"],
        "versions": versions,
        "provider": "CPUExecutionProvider",
        "graph_optimization": "ORT_ENABLE_ALL",
    }


def accuracy_part(
    args: argparse.Namespace, work: Path, fp32: Path, calib: np.ndarray, test: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """Size, cosine and paired 5-shot accuracy of each config against fp32."""
    masks = support_masks(labels, args.shots, args.seeds)  # the device's probe: its `auto` head per episode
    t0 = time.perf_counter()
    ref = run_features(fp32, test)  # (N, 1280)
    acc_fp32 = probe_accuracy(ref, labels, masks)
    out: dict[str, Any] = {
        "fp32": {"accuracy": acc_fp32, "seconds": time.perf_counter() - t0, "bytes": fp32.stat().st_size}
    }
    for name in args.configs:
        cfg = CONFIGS[name]()
        t0 = time.perf_counter()
        report = quantize_int8(
            fp32, work / f"{name}.int8.onnx", calib, cfg, source=f"fashion-mnist train[:{len(calib)}]"
        )
        quant_s = time.perf_counter() - t0
        feats = run_features(work / f"{name}.int8.onnx", test)
        per_seed = [probe_accuracy(ref, labels, [m]) - probe_accuracy(feats, labels, [m]) for m in masks]
        cos_mean, cos_min = float(row_cosine(ref, feats).mean()), float(row_cosine(ref, feats).min())
        out[name] = {
            **report.to_dict(),
            "cosine_mean": cos_mean,
            "cosine_min": cos_min,
            "accuracy_fp32": acc_fp32,
            "accuracy_int8": probe_accuracy(feats, labels, masks),
            "drop_points": float(np.mean(per_seed)),
            "drop_points_per_seed": per_seed,
            "quantize_seconds": quant_s,
        }
        print(
            f"{name:12s} size {report.size_ratio:.3f}  cos {cos_mean:.4f}/{cos_min:.4f}",
            f"drop {np.mean(per_seed):+.2f} pt",
        )
    return out


def latency_part(args: argparse.Namespace, models: dict[str, Path], image: np.ndarray) -> dict[str, Any]:
    """p50 per round for each model, and each int8 / fp32 ratio per round (same round, same noise)."""
    out: dict[str, Any] = {}
    for threads in args.threads:
        rounds = []
        for _ in range(args.repeats):
            stats = interleaved_latency(models, image, runs=args.runs, warmup=args.warmup, threads=threads)
            rounds.append({k: vars(v) for k, v in stats.items()})
        ratios = {
            f"{k}/{base}": [r[k]["p50_ms"] / r[base]["p50_ms"] for r in rounds]
            for base in ("fp32", "fp32_prepared")
            for k in models
            if k.startswith("int8")
        }
        out[f"threads_{threads}"] = {
            "rounds": rounds,
            "ratio_p50_per_round": ratios,
            "ratio_p50_median": {k: float(np.median(v)) for k, v in ratios.items()},
        }
        print(f"threads={threads}: " + ", ".join(f"{k} {np.median(v):.3f}" for k, v in ratios.items()))
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    lat = result["latency"][f"threads_{result['args']['threads'][0]}"]["ratio_p50_median"]
    acc = {k: v["drop_points"] for k, v in result["accuracy"].items() if k != "fp32"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].barh(list(lat), list(lat.values()))
    axes[0].axvline(0.55, color="r", ls="--", label="target 0.55")
    axes[0].set_xlabel("int8 / fp32 p50 latency (batch 1)")
    axes[0].legend()
    axes[1].bar(list(acc), list(acc.values()))
    axes[1].axhline(0.5, color="r", ls="--", label="target 0.5")
    axes[1].set_ylabel(f"{result['args']['shots']}-shot accuracy drop (points)")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench/quantize.json"))
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--calib", type=int, default=300)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--configs", nargs="+", default=["default", "x86_vnni"], choices=sorted(CONFIGS))
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--guard", action="store_true", help="also run quantize_guarded(max_drop=0.5) on the test set")
    args = p.parse_args(argv)
    work = args.out.parent / "quantize_models"
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    result["environment"] = environment()
    result["load_average_start"] = os.getloadavg()
    fp32 = work / "lite0.fp32.onnx"
    spec = export_fp32(fp32, args.size)
    from edgetl_runtime.preprocess import preprocess_batch

    t0 = time.perf_counter()
    calib = preprocess_batch(list(load_fmnist("train", args.calib)[0]), spec)  # (C, 3, H, W)
    test_u8, labels = load_fmnist("t10k", args.test)
    test = preprocess_batch(list(test_u8), spec)  # (N, 3, H, W)
    result["preprocess_ms_per_image"] = 1e3 * (time.perf_counter() - t0) / (len(calib) + len(test))
    result["accuracy"] = accuracy_part(args, work, fp32, calib, test, labels)
    models = {"fp32": fp32, "fp32_prepared": prepare_fp32(fp32, work / "lite0.fp32.prepared.onnx")}
    models.update({f"int8_{name}": work / f"{name}.int8.onnx" for name in args.configs})
    result["latency"] = latency_part(args, models, test[:1])
    if args.guard:
        report = quantize_guarded(fp32, work / "guarded.int8.onnx", calib, test, labels, max_drop=0.5, shots=args.shots)
        result["guard"] = report.to_dict()
    result["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    plot(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
