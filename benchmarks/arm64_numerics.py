"""int8 numerics on ARM64 kernels (emulated) beside x86: feature cosine and 5-shot accuracy drop per preset.

What it measures is numerics, not time: under qemu user-mode emulation the ARM64 instructions are
those of onnxruntime's aarch64 build (NEON, dot product with ``-cpu cortex-a76``), so its int8 results
are the device's, while its timings would be qemu's. Per int8 preset of
``edgetl_exporters.quantization.PRESETS`` but host/auto (portable, x86-avx2, x86-vnni, arm, tensorrt;
a preset whose int8 model is byte-identical to an earlier one's is reported as that one):

- feature cosine of int8 against fp32 on every test image (mean, 5th percentile, min);
- 5-shot 10-way accuracy with the runtime's own head (``edgetl_runtime.heads.create_head("auto")``)
  over paired episodes (the same support/query split for every model), and the drop fp32 - int8;
- the cosine between the ARM64 and the x86 features of the same model (do the kernels agree?), and
  whether x86 under the ARM64 side's onnxruntime version gives this venv's features bit for bit (so
  that ARM64-vs-x86 differences are the architecture's, not onnxruntime's version's).

Setup: EfficientNet-Lite0 (bundled ImageNet weights) at 96 px, exported on this host by
``scripts/arm64_bundles.py`` (calibration: 64 class-balanced Fashion-MNIST train images; no node kept
in float); test images: ``--per-class`` Fashion-MNIST t10k images per class (default 30: 300 images,
episodes of 5 support + 25 queries per class). The ARM64 side runs in the environment of
``scripts/arm64-env.sh`` (onnxruntime pinned in scripts/arm64-requirements.txt); the x86 side in
this venv. Both sides extract features through ``Learner.features`` (the runtime's preprocessing
and onnxruntime session) and fit heads with the runtime's numpy code on their own machine.

Usage (about 10 min on 2 cores, most of it fp32 under emulation)::

    .venv/bin/python benchmarks/arm64_numerics.py --out runs/bench/arm64_numerics.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
REFERENCE = "fp32"  # the four bundles ship the same fp32 member (same weights, same export)
SHOTS = 5


# ---------------------------------------------------------------- worker: runs on either machine


def _presets(bundles: Path) -> list[str]:
    names: list[str] = json.loads((bundles / "done.json").read_text())["presets"]
    return names


def _models(bundles: Path) -> list[tuple[str, Path, str]]:
    """(name, bundle, precision): fp32 once, then each preset's int8."""
    int8 = [(p, bundles / f"{p}.edgetl", "int8") for p in _presets(bundles)]
    return [(REFERENCE, bundles / "arm.edgetl", "fp32"), *int8]


def _aliases(bundles: Path) -> dict[str, str]:
    """Preset -> an earlier preset with the byte-identical int8 model (e.g. portable and x86-avx2)."""
    from edgetl_runtime.bundle.manifest import Precision
    from edgetl_runtime.bundle.reader import Bundle

    seen: dict[str, str] = {}
    aliases: dict[str, str] = {}
    for preset in _presets(bundles):
        digest = Bundle.open(bundles / f"{preset}.edgetl").manifest.members[Precision.INT8.member].sha256
        if digest in seen:
            aliases[preset] = seen[digest]
        seen.setdefault(digest, preset)
    return aliases


def _test_set(bundles: Path, per_class: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    with np.load(bundles / "fmnist.npz") as data:
        images, labels = data["images"], data["labels"]
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
    if np.bincount(labels[keep]).min() < per_class:
        raise SystemExit(f"fmnist.npz has fewer than {per_class} images of some class")
    return images[keep], labels[keep]


def _episodes(labels: npt.NDArray[np.int64], count: int) -> list[npt.NDArray[np.bool_]]:
    """Support masks: SHOTS images per class drawn with seed = episode number; the rest are queries."""
    masks = []
    for seed in range(count):
        rng = np.random.default_rng(seed)
        mask = np.zeros(len(labels), dtype=bool)
        for c in np.unique(labels):
            mask[rng.choice(np.flatnonzero(labels == c), SHOTS, replace=False)] = True
        masks.append(mask)
    return masks


def _few_shot(features: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], episodes: int) -> list[float]:
    from edgetl_runtime.heads import create_head

    accuracies = []
    for support in _episodes(labels, episodes):
        head = create_head("auto").fit(features[support], labels[support].astype(str))
        predicted = np.asarray(head.predict(features[~support]))
        accuracies.append(float(np.mean(predicted == labels[~support].astype(str))))
    return accuracies


def _cosine(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cosine: npt.NDArray[np.float64] = np.sum(a64 * b64, axis=1) / (
        np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1) + 1e-12
    )
    return cosine


def worker(bundles: Path, per_class: int, episodes: int, out: Path) -> None:
    """Features, cosines and episode accuracies of every model on this machine -> ``out`` (.json + .npz)."""
    import onnxruntime

    from edgetl_runtime.learner import Learner

    images, labels = _test_set(bundles, per_class)
    features: dict[str, npt.NDArray[np.float32]] = {}
    models: dict[str, Any] = {}
    aliases = _aliases(bundles)
    for name, bundle, precision in _models(bundles):
        if name in aliases:  # the same int8 bytes: the same numbers
            features[name] = features[aliases[name]]
            models[name] = {**models[aliases[name]], "same_model_as": aliases[name]}
            continue
        start = time.perf_counter()
        with Learner.load(bundle, None, backend="onnxruntime", precision=precision) as learner:
            assert learner.backend.precision.value == precision
            features[name] = learner.features(list(images))
        extract_s = time.perf_counter() - start
        start = time.perf_counter()
        models[name] = {"accuracy": _few_shot(features[name], labels, episodes)}
        models[name]["seconds"] = {"features": round(extract_s, 1), "heads": round(time.perf_counter() - start, 1)}
        if name != REFERENCE:
            cos = _cosine(features[name], features[REFERENCE])
            models[name]["cosine"] = {"mean": cos.mean(), "p5": np.percentile(cos, 5), "min": cos.min()}
        print(f"  [{platform.machine()}] {name}: {models[name]['seconds']}", file=sys.stderr, flush=True)
    np.savez(out.with_suffix(".npz"), **features)  # type: ignore[arg-type]
    info = {
        "machine": platform.machine(),
        "qemu_cpu": os.environ.get("EDGETL_ARM64_CPU") if platform.machine() == "aarch64" else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "images": len(labels),
        "episodes": episodes,
        "models": models,
    }
    out.write_text(json.dumps(info, indent=2, default=float) + "\n")


# ---------------------------------------------------------------- host: prepares, runs both, compares


def _run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}")
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def _side(cmd: list[str], args: argparse.Namespace, bundles: Path, out: Path, env: dict[str, str]) -> dict[str, Any]:
    worker_args = ["--worker", "--bundles", str(bundles), "--per-class", str(args.per_class)]
    _run([*cmd, __file__, *worker_args, "--episodes", str(args.episodes), "--worker-out", str(out)], env)
    result: dict[str, Any] = json.loads(out.read_text())
    with np.load(out.with_suffix(".npz")) as data:
        result["features"] = {k: data[k] for k in data.files}
    return result


def _same_ort_x86(
    host_py: str, version: str, cache: Path, args: argparse.Namespace, bundles: Path, out: Path
) -> dict[str, Any]:
    """The x86 side again under the ARM64 side's onnxruntime (x86 wheel in CACHE/x86-onnxruntime-VERSION)."""
    site = cache / f"x86-onnxruntime-{version}"
    if not (site / "onnxruntime").is_dir():
        pip = [host_py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", "--target"]
        _run([*pip, str(site), f"onnxruntime=={version}"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    print(f"x86 under onnxruntime {version} (the ARM64 side's)", file=sys.stderr)
    return _side([host_py], args, bundles, out, env)


def _summary(side: dict[str, Any], name: str) -> dict[str, Any]:
    model = side["models"][name]
    acc = np.asarray(model["accuracy"])
    ref = np.asarray(side["models"][REFERENCE]["accuracy"])
    drop = 100 * (ref - acc)  # paired: same episodes
    return {
        "accuracy_5shot": 100 * float(acc.mean()),
        "drop_points": float(drop.mean()),
        "drop_se": float(drop.std(ddof=1) / np.sqrt(len(drop))) if len(drop) > 1 else 0.0,
        **({"cosine": model["cosine"]} if "cosine" in model else {}),
    }


def _table(report: dict[str, Any]) -> str:
    head = (
        f"{'model':<22} {'cos ARM64':>9} {'cos x86':>9} {'min ARM64':>9} {'min x86':>9} {'5-shot ARM64':>12} "
        f"{'5-shot x86':>10} {'drop ARM64':>11} {'drop x86':>11} {'ARM64~x86':>9}"
    )
    lines = [head, "-" * len(head)]
    for name, row in report["models"].items():
        arm, x86 = row["arm64"], row["x86"]
        label = f"{name} (= {row['same_model_as']})" if "same_model_as" in row else name
        cos = [f"{side['cosine']['mean']:.5f}" if "cosine" in side else "-" for side in (arm, x86)]
        low = [f"{side['cosine']['min']:.4f}" if "cosine" in side else "-" for side in (arm, x86)]
        drop = [
            f"{side['drop_points']:+.2f}±{side['drop_se']:.2f}" if name != REFERENCE else "-" for side in (arm, x86)
        ]
        lines.append(
            f"{label:<22} {cos[0]:>9} {cos[1]:>9} {low[0]:>9} {low[1]:>9} {arm['accuracy_5shot']:>11.2f}% "
            f"{x86['accuracy_5shot']:>9.2f}% {drop[0]:>11} {drop[1]:>11} {row['arm64_vs_x86_cosine']['min']:>9.6f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "arm64_numerics.json")
    parser.add_argument("--size", type=int, default=96, help="input size of the exported bundles (px)")
    parser.add_argument("--per-class", type=int, default=30, help="Fashion-MNIST t10k test images per class (max 60)")
    parser.add_argument("--episodes", type=int, default=20, help="paired 5-shot episodes")
    parser.add_argument("--cpu", default="cortex-a76", help="qemu -cpu model of the ARM64 side")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bundles", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.bundles, args.per_class, args.episodes, args.worker_out)
        return 0

    host_py = sys.executable
    bundles = Path(_run([host_py, str(REPO / "scripts" / "arm64_bundles.py"), "--size", str(args.size)]))
    arm_env_dir = Path(_run(["bash", str(REPO / "scripts" / "arm64-env.sh")]))
    env = {**os.environ, "EDGETL_ARM64_PATH": str(REPO / "runtime" / "src"), "EDGETL_ARM64_CPU": args.cpu}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="arm64-numerics-") as tmp:
        print(f"x86 (this venv), {args.per_class} images per class at {args.size} px", file=sys.stderr)
        x86 = _side([host_py], args, bundles, Path(tmp) / "x86.json", dict(os.environ))
        print(f"ARM64 (qemu-aarch64 -cpu {args.cpu})", file=sys.stderr)
        arm = _side([str(arm_env_dir / "bin" / "python")], args, bundles, Path(tmp) / "arm64.json", env)
        same = _same_ort_x86(host_py, arm["onnxruntime"], bundles.parent, args, bundles, Path(tmp) / "x86-same.json")
    report: dict[str, Any] = {
        "what": "EfficientNet-Lite0 (bundled ImageNet weights) features, Fashion-MNIST t10k; int8 vs fp32",
        "size_px": args.size,
        "images": arm["images"],
        "episodes": args.episodes,
        "shots": SHOTS,
        "head": 'edgetl_runtime.heads.create_head("auto")',
        "bundles": str(bundles),
        "arm64": {k: v for k, v in arm.items() if k not in ("models", "features")},
        "x86": {k: v for k, v in x86.items() if k not in ("models", "features")},
        "x86_same_onnxruntime": {
            "onnxruntime": same["onnxruntime"],
            "max_abs_diff_vs_x86": max(
                float(np.abs(same["features"][k] - x86["features"][k]).max()) for k in same["features"]
            ),
        },
        "seconds": round(time.perf_counter() - start, 1),
        "models": {},
    }
    for name, _, _ in _models(bundles):
        cross = _cosine(arm["features"][name], x86["features"][name])
        report["models"][name] = {
            "arm64": _summary(arm, name),
            "x86": _summary(x86, name),
            "arm64_vs_x86_cosine": {"mean": float(cross.mean()), "min": float(cross.min())},
            "seconds": {"arm64": arm["models"][name]["seconds"], "x86": x86["models"][name]["seconds"]},
        }
        if "same_model_as" in arm["models"][name]:
            report["models"][name]["same_model_as"] = arm["models"][name]["same_model_as"]
    table = _table(report)
    report["table"] = table.splitlines()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(
        f"{report['images']} Fashion-MNIST t10k images at {args.size} px, {args.episodes} paired 5-shot 10-way "
        f"episodes; ARM64: onnxruntime {arm['onnxruntime']} under qemu -cpu {args.cpu}; x86: onnxruntime "
        f"{x86['onnxruntime']}. cos/min = mean/min cosine of int8 vs fp32 features; drop = fp32 - int8 "
        "accuracy (points, ± standard error over episodes); ARM64~x86 = min cosine between the two machines' "
        "features of the same model."
    )
    print(table)
    same = report["x86_same_onnxruntime"]
    print(
        f"x86 under onnxruntime {same['onnxruntime']} (the ARM64 side's): max |feature difference| from this "
        f"venv's {same['max_abs_diff_vs_x86']:.3g}"
    )
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
