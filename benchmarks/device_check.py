"""GPU device check: export EfficientNet-Lite0, build TensorRT fp16/int8 engines, check them against golden.npz,
and time them beside onnxruntime's CUDA execution provider (fp32, fp16).

Run it through ``bash benchmarks/device_check.sh`` (which prepares the environment). Every step prints
whether it worked; a failed step is recorded and the others still run. Results: a table on stdout and
``device_check.json`` + ``device_check.txt`` in ``--out`` ($OUT, else runs/device_check).

Latency is end-to-end ``Backend.run`` on float32 host arrays, host<->device copies included, measured
in one process after warm-up. int8 is only timed from an engine built on the bundle's calibrated
(explicit Q/DQ) int8 ONNX, whose calibration provenance is printed and recorded (DESIGN §5).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RESULTS: dict[str, Any] = {"steps": {}, "parity": {}, "latency": [], "build": {}}


def step(name: str, fn: Callable[[], Any]) -> Any:
    """Run one named step; print and record whether it worked, never let it stop the others."""
    print(f"\n=== [device_check] {name}", flush=True)
    start = time.perf_counter()
    try:
        value = fn()
    except Exception as exc:  # report and continue: a device check should say everything it can
        traceback.print_exc()
        RESULTS["steps"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(f"=== [device_check] FAILED: {name}: {type(exc).__name__}: {exc}", flush=True)
        return None
    RESULTS["steps"][name] = {"ok": True, "seconds": round(time.perf_counter() - start, 2)}
    print(f"=== [device_check] ok: {name} ({time.perf_counter() - start:.1f} s)", flush=True)
    return value


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()}
    for module in ("numpy", "torch", "timm", "onnx", "onnxruntime", "tensorrt"):
        try:
            env[module] = __import__(module).__version__
        except Exception as exc:
            env[module] = f"unavailable ({type(exc).__name__})"
    try:
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except Exception:
        pass
    try:
        smi = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        env["nvidia_smi"] = subprocess.run(smi, check=False, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as exc:
        env["nvidia_smi"] = f"unavailable ({exc})"
    from edgetl_runtime.backends.tensorrt import device_info, gpu_available

    env["gpu_available"] = gpu_available()
    if env["gpu_available"]:
        env.update(device_info())
    return env


def calibration_data(seed: int = 0) -> tuple[Any, str]:
    """Fashion-MNIST train when present; else random crops of scikit-image's bundled sample images."""
    from edgetl.datasets import fashion_mnist_dir, from_arrays, load_fashion_mnist

    if fashion_mnist_dir() is not None:
        return load_fashion_mnist("train"), "fashion-mnist:train"
    from skimage import data

    rng = np.random.default_rng(seed)
    images, labels, names = [], [], []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "page", "text", "clock",
                 "horse", "immunohistochemistry", "hubble_deep_field", "brick", "grass", "gravel"):  # fmt: skip
        try:
            image = np.asarray(getattr(data, name)())
        except Exception:  # some need a download; skip those
            continue
        image = (image.astype(np.float32) * 255).astype(np.uint8) if image.dtype == bool else image.astype(np.uint8)
        height, width = image.shape[:2]
        for _ in range(64):  # 64 random crops per image, one class per source image
            size = int(rng.integers(min(48, height, width), min(height, width) + 1))
            top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
            images.append(np.ascontiguousarray(image[top : top + size, left : left + size]))
            labels.append(len(names))
        names.append(name)
    if len(names) < 2:
        raise RuntimeError("Neither Fashion-MNIST nor enough scikit-image sample images are available for calibration.")
    return from_arrays(images, labels, names), f"skimage.data random crops ({len(names)} images x 64)"


def export(args: argparse.Namespace) -> Path:
    if args.bundle:
        print(f"using the given bundle {args.bundle}")
        return Path(args.bundle)
    from edgetl.export import BundleConfig, export_bundle
    from edgetl_exporters.quantize_config import QuantizeConfig

    data, source = calibration_data()
    print(f"calibration data: {source} ({len(data)} images)")
    RESULTS["calibration"] = source
    output = args.out / f"efficientnet_lite0-{args.image_size}.edgetl"
    config = BundleConfig(precisions=("fp32", "int8", "fp16"), calibration_count=128, eval_count=256)
    # TensorRT needs symmetric int8 Q/DQ (zero point 0): the tensorrt preset, not the x86 default. Batch 1:
    # onnxruntime's histogram (percentile) calibration fails on a smaller last batch (onnxruntime #18792).
    quantize = QuantizeConfig.tensorrt(calibration_batch_size=1)
    result = export_bundle("tf_efficientnet_lite0", output, weights=args.weights, data=data, data_source=source,
                           config=config, image_size=args.image_size, quantize_config=quantize)  # fmt: skip
    RESULTS["export_report"] = result.report
    return Path(result.path)


def tensorrt_backends(bundle: Any, args: argparse.Namespace) -> dict[str, Any]:
    from edgetl_runtime.backends import check_against_golden
    from edgetl_runtime.backends.tensorrt import EngineBuildConfig, TensorRTBackend
    from edgetl_runtime.manifest import Precision

    config = EngineBuildConfig(engine_dir=args.out / "engines", timing_cache=args.out / "engines" / "timing.cache",
                               builder_optimization_level=args.opt_level)  # fmt: skip
    backends = {}
    for precision in (Precision.FP16, Precision.INT8):
        start = time.perf_counter()
        backend = step(
            f"tensorrt {precision.value}: build engine",
            lambda p=precision: TensorRTBackend.from_bundle(bundle, p, config),
        )
        if backend is None:
            continue
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        TensorRTBackend.from_bundle(bundle, precision, config).close()  # second load: must hit the cache
        RESULTS["build"][f"tensorrt-{precision.value}"] = {
            "build_s": round(build_s, 2),
            "cached_load_s": round(time.perf_counter() - start, 2),
        }
        report = check_against_golden(backend, bundle).to_dict()
        RESULTS["parity"][f"tensorrt-{precision.value}"] = report
        print(f"tensorrt {precision.value}: built in {build_s:.1f} s; golden {report}")
        backends[f"tensorrt-{precision.value}"] = backend
    return backends


def ort_cuda_backends(bundle: Any) -> dict[str, Any]:
    import onnxruntime

    from edgetl_runtime.backends import check_against_golden
    from edgetl_runtime.backends.onnxruntime import OrtBackend
    from edgetl_runtime.manifest import Precision

    if hasattr(onnxruntime, "preload_dlls"):  # onnxruntime-gpu >= 1.21: load CUDA/cuDNN from pip or torch
        onnxruntime.preload_dlls()
    backends = {}
    for precision in (Precision.FP32, Precision.FP16):
        backend = OrtBackend.from_bundle(bundle, precision, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        if backend.name != "onnxruntime-cuda":
            print(f"onnxruntime {precision.value}: CUDA EP did not load (got {backend.name}); not timing it")
            continue
        RESULTS["parity"][f"{backend.name}-{precision.value}"] = check_against_golden(backend, bundle).to_dict()
        backends[f"{backend.name}-{precision.value}"] = backend
    return backends


def latency(backend: Any, batch: int, size: int, warmup: int, runs: int) -> dict[str, Any]:
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)  # (B, 3, H, W)
    for _ in range(warmup):
        backend.run(x)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        backend.run(x)
        times[i] = time.perf_counter() - start
    ms = times * 1e3
    pct = {f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 90, 99)}
    return {
        "batch": batch,
        "runs": runs,
        **pct,
        "mean_ms": float(ms.mean()),
        "images_per_s": float(batch / times.mean()),
    }


def table() -> str:
    head = f"{'backend':<24}{'batch':>6}" + "".join(
        f"{h:>9}" for h in ("p50 ms", "p90 ms", "p99 ms", "mean ms", "img/s")
    )
    lines = [head + f"{'golden cos':>12}"]
    for row in RESULTS["latency"]:
        cos = RESULTS["parity"].get(row["backend"], {}).get("min_cosine", float("nan"))
        lines.append(f"{row['backend']:<24}{row['batch']:>6}{row['p50_ms']:>9.3f}{row['p90_ms']:>9.3f}{row['p99_ms']:>9.3f}"
                     f"{row['mean_ms']:>9.3f}{row['images_per_s']:>9.0f}{cos:>12.5f}")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "runs/device_check"))
    parser.add_argument("--bundle", help="use this .edgetl bundle instead of exporting one")
    parser.add_argument("--weights", default="bundled", help="bundled (offline), hub, none, or a checkpoint path")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--opt-level", type=int, default=3, help="TensorRT builder optimization level (0..5)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--runs", type=int, default=200, help="timed runs per configuration (>= 100)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    RESULTS["env"] = step("environment", environment) or {}
    print(json.dumps(RESULTS["env"], indent=2))
    bundle_path = step("export EfficientNet-Lite0 bundle (fp32 + int8 + fp16)", lambda: export(args))
    if bundle_path is not None:
        from edgetl_runtime.bundle import Bundle

        bundle = Bundle.open(bundle_path)
        RESULTS["bundle"] = {"path": str(bundle_path), "calibration": bundle.manifest.calibration,
                             "quantization": bundle.manifest.quantization}  # fmt: skip
        print(f"int8 calibration provenance: {bundle.manifest.calibration}")
        backends = step("tensorrt engines", lambda: tensorrt_backends(bundle, args)) or {}
        backends.update(step("onnxruntime CUDA EP", lambda: ort_cuda_backends(bundle)) or {})
        for name, backend in backends.items():
            for batch in (1, 32):
                row = step(
                    f"latency {name} batch {batch}",
                    lambda b=backend, n=batch: latency(b, n, args.image_size, args.warmup, args.runs),
                )
                if row is not None:
                    RESULTS["latency"].append({"backend": name, **row})
    text = table()
    print("\n" + text)
    failed = [name for name, s in RESULTS["steps"].items() if not s["ok"]]
    summary = f"failed steps: {failed}" if failed else "all steps ok"
    print(f"\n=== [device_check] {summary}")
    (args.out / "device_check.json").write_text(json.dumps(RESULTS, indent=2, default=str))
    (args.out / "device_check.txt").write_text(text + "\n" + summary + "\n")
    print(f"=== [device_check] results in {args.out / 'device_check.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
