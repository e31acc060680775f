"""GPU device check: build TensorRT fp16/int8 engines from an EfficientNet-Lite0 bundle, check them against
golden.npz, and time them beside onnxruntime's CUDA execution provider (fp32, fp16).

Run it through ``bash benchmarks/device_check.sh --bundle lite0-trt.edgetl`` (which prepares the
environment). The bundle is normally built on the host (see ``EXPORT_COMMAND``), so the device needs
neither torch nor timm; without ``--bundle`` it is exported here, when torch, timm and onnx are present.
Every step prints ok / FAILED / SKIPPED and the others still run; the last line is the verdict
``DEVICE CHECK: PASS`` or ``DEVICE CHECK: FAIL (<steps>)``, and the exit code is non-zero when a required
step failed. Results: a table on stdout and ``device_check.json`` + ``device_check.txt`` in ``--out``
($OUT, else runs/device_check).

Latency is end-to-end ``Backend.run`` on float32 host arrays, host<->device copies included, measured
in one process after warm-up. int8 is only timed from an engine built on the bundle's calibrated
(explicit Q/DQ) int8 ONNX, whose calibration provenance is printed and recorded (DESIGN §5).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from device_steps import RESULTS, CheckFailed, Skipped, environment, step

EXPORT_COMMAND = (
    "edgetl export tf_efficientnet_lite0 --weights bundled --precision fp32,int8,fp16 "
    "--quant-preset tensorrt -o lite0-trt.edgetl"
)
RUN_COMMAND = "bash benchmarks/device_check.sh --bundle lite0-trt.edgetl"


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


def resolve_bundle(args: argparse.Namespace) -> Path:
    """The given bundle (the normal mode: built on the host); else export one here if torch, timm and onnx exist."""
    if args.bundle:
        path = Path(args.bundle)
        if not path.is_file():
            raise CheckFailed(f"--bundle {path} does not exist. Build one on the host: {EXPORT_COMMAND}")
        print(f"using the given bundle {path}")
        return path
    missing = [m for m in ("torch", "timm", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise CheckFailed(
            f"no --bundle given, and {', '.join(missing)} cannot be imported here to export one. Build it on the host "
            f"({EXPORT_COMMAND}), copy it here, and run: {RUN_COMMAND}"
        )
    print(f"no --bundle given: exporting one here (torch, timm, onnx present); the usual way: {EXPORT_COMMAND}")
    return export(args)


def export(args: argparse.Namespace) -> Path:
    from edgetl.export import BundleConfig, export_bundle
    from edgetl_exporters.quantization import QuantizeConfig

    data, source = calibration_data()
    print(f"calibration data: {source} ({len(data)} images)")
    RESULTS["calibration"] = source
    output = args.out / f"efficientnet_lite0-{args.image_size}.edgetl"
    # This check is about TensorRT parity and latency, not int8 accuracy (judged on the host, on real data):
    # on ad-hoc calibration images the 1-point guard could refuse the int8 model and so block every number here.
    config = BundleConfig(precisions=("fp32", "int8", "fp16"), calibration_count=128, eval_count=256,
                          max_accuracy_drop=5.0)  # fmt: skip
    # TensorRT needs symmetric int8 Q/DQ (zero point 0): the tensorrt preset, not the x86 default. Batch 1:
    # onnxruntime's histogram (percentile) calibration fails on a smaller last batch (onnxruntime #18792).
    quantize = QuantizeConfig.tensorrt(calibration_batch_size=1)
    result = export_bundle("tf_efficientnet_lite0", output, weights=args.weights, data=data, data_source=source,
                           config=config, image_size=args.image_size, quantize_config=quantize)  # fmt: skip
    RESULTS["export_report"] = result.report
    return Path(result.path)


def tensorrt_preflight() -> dict[str, Any]:
    """Everything an engine build needs (tensorrt >= 10, cuda-python's runtime, a visible GPU), all problems at once."""
    from edgetl_runtime.backends.tensorrt import _cudart, device_info, gpu_available

    problems, trt = [], None
    try:
        import tensorrt as trt

        if int(trt.__version__.split(".")[0]) < 10:
            problems.append(f"tensorrt {trt.__version__} is too old: the runtime needs TensorRT 10 or 11")
    except Exception as exc:
        problems.append(f"tensorrt cannot be imported ({type(exc).__name__}: {exc})")
    try:
        _cudart()
    except Exception as exc:
        problems.append(f"cuda-python's runtime module cannot be imported ({type(exc).__name__}: {exc})")
    else:
        if not gpu_available():
            problems.append("cuda-python sees no CUDA device (no GPU, or the NVIDIA driver is missing)")
    if problems:
        raise CheckFailed("; ".join(problems))
    info = device_info()
    info["strongly_typed"] = not hasattr(trt.BuilderFlag, "FP16")  # TensorRT >= 11
    print(f"TensorRT {info['tensorrt']} on {info['gpu_name']} (sm {info['compute_capability']})"
          f"{', strongly typed networks' if info['strongly_typed'] else ''}")  # fmt: skip
    return info


def tensorrt_unsupported(bundle: Any, precision: Any, strongly_typed: bool) -> str | None:
    """Why this bundle cannot give a TensorRT engine at ``precision`` (a SKIPPED reason, with the fix), else None."""
    from edgetl_runtime.backends.tensorrt import int8_problem
    from edgetl_runtime.bundle.manifest import Precision

    manifest = bundle.manifest
    problem = int8_problem(manifest) if precision is Precision.INT8 else None
    if problem:
        return f"{problem}. Host command: {EXPORT_COMMAND}"
    if precision is Precision.FP16 and Precision.FP16 not in manifest.precisions and strongly_typed:
        return f"TensorRT >= 11 builds fp16 only from an fp16 ONNX and the bundle ships none. Fix: {EXPORT_COMMAND}"
    return None


def build_tensorrt(bundle: Any, precision: Any, args: argparse.Namespace) -> Any:
    """Build (or load from the engine cache) one engine, then load it again: the second load must hit the cache."""
    from edgetl_runtime.backends.tensorrt import EngineBuildConfig, TensorRTBackend

    config = EngineBuildConfig(engine_dir=args.out / "engines", timing_cache=args.out / "engines" / "timing.cache",
                               builder_optimization_level=args.opt_level)  # fmt: skip
    start = time.perf_counter()
    backend = TensorRTBackend.from_bundle(bundle, precision, config)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    TensorRTBackend.from_bundle(bundle, precision, config).close()
    cached_s = time.perf_counter() - start
    RESULTS["build"][f"tensorrt-{precision.value}"] = {"build_s": round(build_s, 2), "cached_s": round(cached_s, 2)}
    print(f"tensorrt {precision.value}: built in {build_s:.1f} s, reloaded from the cache in {cached_s:.2f} s")
    return backend


def parity(key: str, backend: Any, bundle: Any) -> dict[str, Any]:
    """Golden check; a mismatch fails the step (and the run): this device would compute a different model."""
    from edgetl_runtime.backends import check_against_golden

    report = check_against_golden(backend, bundle)
    RESULTS["parity"][key] = report.to_dict()
    summary = (f"min cosine {report.min_cosine:.5f} (threshold {report.threshold}, vs {report.reference}), "
               f"max |diff| {report.max_abs_diff:.4g}, min cosine vs fp32 {report.min_cosine_fp32:.5f}")  # fmt: skip
    print(f"{key}: {summary}")
    if not report.passed:
        raise CheckFailed(f"golden mismatch: {summary}")
    return RESULTS["parity"][key]


def tensorrt_backends(bundle: Any, args: argparse.Namespace) -> dict[str, Any]:
    from edgetl_runtime.bundle.manifest import Precision

    info = step("tensorrt preflight", tensorrt_preflight)
    backends: dict[str, Any] = {}
    for precision in (Precision.FP16, Precision.INT8):
        key = f"tensorrt-{precision.value}"

        def build(p: Precision = precision) -> Any:
            reason = tensorrt_unsupported(bundle, p, bool(info and info["strongly_typed"]))
            if reason:
                raise Skipped(reason)
            if info is None:
                raise Skipped("not attempted: the tensorrt preflight failed")
            if p not in bundle.manifest.precisions:  # TensorRT 10 only (see tensorrt_unsupported)
                print("the bundle ships no fp16 ONNX: TensorRT 10 builds fp16 from the fp32 one (golden bound 0.95)")
            return build_tensorrt(bundle, p, args)

        backend = step(f"tensorrt {precision.value}: build engine", build)
        if backend is None:
            continue
        if step(f"tensorrt {precision.value}: parity vs golden", lambda k=key, b=backend: parity(k, b, bundle)):
            backends[key] = backend
        else:  # a different model: not worth timing
            backend.close()
    return backends


def ort_cuda_backends(bundle: Any) -> dict[str, Any]:
    """onnxruntime's CUDA EP, for comparison only: its absence is SKIPPED, but a built one must match golden."""
    from edgetl_runtime.backends.onnxruntime import OrtBackend
    from edgetl_runtime.bundle.manifest import Precision

    def preflight() -> str:
        if importlib.util.find_spec("onnxruntime") is None:
            raise Skipped("onnxruntime is not installed (install onnxruntime-gpu for the CUDA EP comparison)")
        import onnxruntime

        providers = onnxruntime.get_available_providers()
        if "CUDAExecutionProvider" not in providers:
            raise Skipped(f"onnxruntime {onnxruntime.__version__} has no CUDA EP (providers {providers}); "
                          "install onnxruntime-gpu built for this CUDA major")  # fmt: skip
        if hasattr(onnxruntime, "preload_dlls"):  # onnxruntime-gpu >= 1.21: load CUDA/cuDNN from pip or torch
            onnxruntime.preload_dlls()
        return str(onnxruntime.__version__)

    backends: dict[str, Any] = {}
    if step("onnxruntime CUDA EP preflight", preflight, required=False) is None:
        return backends
    for precision in (Precision.FP32, Precision.FP16):

        def load(p: Precision = precision) -> Any:
            if p not in bundle.manifest.precisions:
                raise Skipped(f"the bundle ships no {p.value} model")
            backend = OrtBackend.from_bundle(bundle, p, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            if backend.name != "onnxruntime-cuda":
                raise Skipped(f"the CUDA EP did not load (onnxruntime fell back to {backend.name}; see its log)")
            return backend

        backend = step(f"onnxruntime CUDA EP {precision.value}: load", load, required=False)
        key = f"onnxruntime-cuda-{precision.value}"
        if backend is not None and step(f"onnxruntime CUDA EP {precision.value}: parity vs golden",
                                        lambda k=key, b=backend: parity(k, b, bundle)) is not None:  # fmt: skip
            backends[key] = backend
    return backends


def latency(backend: Any, batch: int, size: int, warmup: int, runs: int) -> dict[str, Any]:
    from edgetl_runtime.measure.latency import measure

    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)  # (B, 3, H, W)
    stats = measure(lambda: backend.run(x), runs=runs, warmup=warmup, items_per_call=batch)
    pct = {"p50_ms": stats.p50_ms, "p90_ms": stats.p90_ms, "p99_ms": stats.p99_ms}
    mean = {"mean_ms": stats.mean_ms, "images_per_s": batch / (stats.mean_ms / 1e3)}
    return {"batch": batch, "runs": stats.runs, **pct, **mean}


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


def verdict() -> tuple[str, list[str]]:
    """The one-line verdict and the per-step summary lines. No TensorRT engine checked at all is a failure too."""
    steps = RESULTS["steps"]
    failed = [n for n, s in steps.items() if s["status"] == "FAILED" and s["required"]]
    if not failed and not any(k.startswith("tensorrt-") for k in RESULTS["parity"]):
        failed.append("no TensorRT engine was built and checked")
    lines = []
    for name, s in steps.items():
        status = s["status"] if s["required"] or s["status"] != "FAILED" else "FAILED (optional)"
        detail = s.get("reason") or s.get("error") or ""
        lines.append(f"{status:<18} {name}" + (f": {detail.splitlines()[0]}" if detail else ""))
    return ("DEVICE CHECK: PASS" if not failed else f"DEVICE CHECK: FAIL ({'; '.join(failed)})"), lines


def run_checks(args: argparse.Namespace) -> None:
    RESULTS["env"] = step("environment", environment, required=False) or {}
    print(json.dumps(RESULTS["env"], indent=2))
    bundle_path = step("bundle", lambda: resolve_bundle(args))
    if bundle_path is None:
        return
    from edgetl_runtime.bundle.reader import Bundle

    bundle = step("open and verify the bundle", lambda: Bundle.open(bundle_path))
    if bundle is None:
        return
    manifest = bundle.manifest
    RESULTS["bundle"] = {"path": str(bundle_path), "precisions": [p.value for p in manifest.precisions],
                         "calibration": manifest.calibration, "quantization": manifest.quantization}  # fmt: skip
    print(f"precisions {RESULTS['bundle']['precisions']}; int8 calibration provenance: {manifest.calibration}")
    backends = {name: (b, True) for name, b in tensorrt_backends(bundle, args).items()}
    backends.update({name: (b, False) for name, b in ort_cuda_backends(bundle).items()})
    try:
        for name, (backend, required) in backends.items():
            for batch in (1, 32):
                row = step(
                    f"latency {name} batch {batch}",
                    lambda b=backend, n=batch: latency(b, n, args.image_size, args.warmup, args.runs),
                    required=required,
                )
                if row is not None:
                    RESULTS["latency"].append({"backend": name, **row})
    finally:
        for backend, _ in backends.values():
            getattr(backend, "close", lambda: None)()


def _terminated(signum: int, frame: Any) -> None:
    """SIGTERM (device_check.sh's timeout): unwind so the results so far and a FAIL verdict are still written."""
    raise SystemExit(124)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "runs/device_check"))
    parser.add_argument("--bundle", help="a .edgetl bundle built on the host (the normal mode); see EXPORT_COMMAND")
    parser.add_argument("--weights", default="bundled", help="without --bundle: bundled, hub, none, or a path")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--opt-level", type=int, default=3, help="TensorRT builder optimization level (0..5)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--runs", type=int, default=200, help="timed runs per configuration (>= 100)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _terminated)

    interrupted = None
    try:
        run_checks(args)
    except (SystemExit, KeyboardInterrupt) as exc:
        interrupted = "timed out (SIGTERM)" if isinstance(exc, SystemExit) else "interrupted"
    text = table()
    line, summary = verdict()
    if interrupted:
        line = f"DEVICE CHECK: FAIL ({interrupted}; results so far are in {args.out})"
    RESULTS["verdict"] = line
    (args.out / "device_check.json").write_text(json.dumps(RESULTS, indent=2, default=str))
    (args.out / "device_check.txt").write_text("\n".join([text, "", *summary, "", line]) + "\n")
    print("\n" + text + "\n\n" + "\n".join(summary))
    print(f"\nresults in {args.out / 'device_check.json'} and device_check.txt")
    print(line, flush=True)
    return 0 if line == "DEVICE CHECK: PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
