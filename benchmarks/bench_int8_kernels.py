"""Each int8 preset under onnxruntime's exact and fast x86 kernels: feature cosine, 5-shot drop, latency.

Why it exists: without VNNI, MLAS's fast u8 x s8 kernel (``vpmaddubsw``) sums products pairwise in
int16 and saturates on 8-bit weights; edgetl's sessions select the exact kernel
(``session.x64quantprecision=1``). This measures what that costs and buys per preset: the
``x86-avx2`` preset (7-bit weights) should be identical and as fast under both; the 8-bit presets
(``x86-vnni``, ``arm``, ``tensorrt``) should be faithful only under the exact kernel, and slower here.

EfficientNet-Lite0 (bundled ImageNet weights) exported by edgetl, Fashion-MNIST: the first ``--calib``
train images calibrate, the first ``--test`` t10k images are scored (same 5-shot splits for every
model, so drops are paired). Latency: batch 1, 1 thread, every model and kernel timed round-robin.

Usage::

    .venv/bin/python benchmarks/bench_int8_kernels.py --out runs/bench/int8_kernels.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_quantize import environment, export_fp32, load_fmnist

from edgetl_exporters.quantization import QuantizeConfig
from edgetl_exporters.quantization.core import quantize_int8
from edgetl_exporters.quantization.measure import run_features
from edgetl_runtime.backends.onnxruntime import Int8Kernel, session_options
from edgetl_runtime.fewshot import probe_accuracy, support_masks
from edgetl_runtime.measure.latency import measure_interleaved
from edgetl_runtime.numerics import row_cosine
from edgetl_runtime.preprocess import preprocess_batch

KERNELS = tuple(k.value for k in Int8Kernel)
PRESETS = ("x86-avx2", "x86-vnni", "arm", "tensorrt")


def session(model: Path, kernel: str) -> Any:
    import onnxruntime as ort

    options = session_options(threads=1, kernel=Int8Kernel(kernel))
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--calib", type=int, default=100)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=60, help="round-robin latency rounds")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/int8_kernels.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edgetl-int8-kernels-") as tmp:
        work = Path(tmp)
        fp32 = work / "fp32.onnx"
        spec = export_fp32(fp32, args.size)
        calib = preprocess_batch(list(load_fmnist("train", args.calib)[0]), spec)
        images, labels = load_fmnist("test", args.test)
        test = preprocess_batch(list(images), spec)
        masks = support_masks(labels, 5, args.seeds)  # the device's probe: its `auto` head per episode
        reference = run_features(session(fp32, "exact"), test)
        acc_fp32 = probe_accuracy(reference, labels, masks)
        rows, timed = [], {"fp32": session(fp32, "exact")}
        for preset in PRESETS:
            model = work / f"{preset}.onnx"
            quantize_int8(fp32, model, calib, QuantizeConfig.preset(preset, num_calibration=args.calib))
            for kernel in KERNELS:
                feats = run_features(session(model, kernel), test)
                cosine = row_cosine(reference, feats)  # (N,)
                drop = acc_fp32 - probe_accuracy(feats, labels, masks)
                row = {"preset": preset, "kernel": kernel, "cosine_mean": cosine.mean(), "cosine_min": cosine.min()}
                rows.append({**row, "drop_points": drop, "bytes": model.stat().st_size})
                timed[f"{preset}/{kernel}"] = session(model, kernel)
        one = test[:1]
        calls = {name: (lambda s=s: s.run(None, {s.get_inputs()[0].name: one})) for name, s in timed.items()}
        start = time.perf_counter()
        stats = measure_interleaved(calls, rounds=args.rounds, warmup_rounds=3)
        base = stats["fp32"].p50_ms
        for row in rows:
            p50 = stats[f"{row['preset']}/{row['kernel']}"].p50_ms
            row.update(p50_ms=p50, ratio_to_fp32=p50 / base)
    result = {
        "environment": environment(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "accuracy_fp32": acc_fp32,
        "fp32_p50_ms": base,
        "latency_seconds": time.perf_counter() - start,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"fp32: 5-shot accuracy {acc_fp32:.2f} %, batch-1 p50 {base:.2f} ms (1 thread)")
    header = ("preset", "kernel", "cos mean", "cos min", "drop pt", "p50 ms", "x fp32")
    print(f"{header[0]:10s} {header[1]:6s} " + " ".join(f"{h:>8s}" for h in header[2:]))
    for r in rows:
        print(
            f"{r['preset']:10s} {r['kernel']:6s} {r['cosine_mean']:8.4f} {r['cosine_min']:8.4f} "
            f"{r['drop_points']:+8.2f} {r['p50_ms']:8.2f} {r['ratio_to_fp32']:8.3f}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
