"""Host side of the ARM64 checks: small real bundles and Fashion-MNIST images, exported once and cached.

One bundle per int8 target of ``edgetl_exporters.quantization.PRESETS`` but ``host``/``auto`` (which
name the exporting machine, not a device): portable, x86-avx2, x86-vnni, arm, tensorrt. Each also ships fp32:
EfficientNet-Lite0 with its bundled ImageNet weights at a small input size (96 px by default), calibrated
on class-balanced Fashion-MNIST train images. The accuracy guard runs but may not exclude nodes
(``max_accuracy_drop`` is wide), so each int8 model is exactly its preset. Beside them, ``fmnist.npz``
holds Fashion-MNIST t10k images (uint8 28x28, labels, class names) for the device-side tests and the
numerics benchmark, which only need numpy to read it.

The folder is ``CACHE/bundles-KEY``; KEY hashes every Python source the export runs (edgetl/,
exporters/src, runtime/src, this file), the exporting packages' versions and the arguments, so a
change to any of them exports afresh and an unchanged tree reuses the bundles.

Usage (prints the folder)::

    .venv/bin/python scripts/arm64_bundles.py [--size 96] [--cache ~/.cache/edgetl/arm64]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HOST_ALIASES = ("host", "auto")  # presets naming the exporting machine's CPU, not a device
SOURCES = ("edgetl", "exporters/src", "runtime/src")
VERSIONED = ("torch", "timm", "onnx", "onnxruntime", "onnxslim", "numpy")
DEFAULT_CACHE = Path(os.environ.get("EDGETL_ARM64_CACHE", Path.home() / ".cache" / "edgetl" / "arm64"))
CALIBRATION_COUNT = 64
EVAL_COUNT = 120
TEST_PER_CLASS = 60  # Fashion-MNIST t10k images per class written to fmnist.npz


def cache_key(size: int) -> str:
    digest = hashlib.sha256()
    files = [Path(__file__).resolve()]
    for folder in SOURCES:
        files += sorted((REPO / folder).rglob("*.py"))
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    for dist in VERSIONED:
        try:
            digest.update(f"{dist}=={importlib.metadata.version(dist)}\n".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{dist} missing\n".encode())
    digest.update(f"size={size} calib={CALIBRATION_COUNT} eval={EVAL_COUNT} test={TEST_PER_CLASS}".encode())
    return digest.hexdigest()[:16]


def _test_images(out: Path) -> None:
    from edgetl.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist

    test = load_fashion_mnist("test")
    rng = np.random.default_rng(0)
    keep = np.concatenate(
        [rng.permutation(np.flatnonzero(test.labels == c))[:TEST_PER_CLASS] for c in range(len(test.classes))]
    )
    keep = keep[rng.permutation(len(keep))]
    images = np.asarray(test.images)[keep]
    np.savez(
        out / "fmnist.npz",
        images=images.astype(np.uint8),
        labels=test.labels[keep].astype(np.int64),
        classes=np.array(FASHION_MNIST_CLASSES),
        source=np.array(f"fashion-mnist:t10k, {TEST_PER_CLASS} random per class (seed 0)"),
    )


def export_arguments(size: int) -> list[str]:
    """``edgetl export`` flags shared by every preset (the command a user runs, so internals may move)."""
    return [
        "export", "tf_efficientnet_lite0", "--weights", "bundled", "--image-size", str(size),
        "--precision", "fp32,int8", "--calib", "fashion-mnist", "--calib-count", str(CALIBRATION_COUNT),
        "--eval-count", str(EVAL_COUNT),
        "--max-drop", "100",  # report the drop, never keep nodes in float: each int8 model is exactly its preset
    ]  # fmt: skip


def presets() -> list[str]:
    """The ``--target`` choices of ``edgetl export`` that name a device (not ``host``/``auto``)."""
    from edgetl.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    target = next(a for a in commands.choices["export"]._actions if a.dest == "target")
    return [name for name in target.choices or () if name not in HOST_ALIASES]


def export_all(out: Path, size: int) -> dict[str, float]:
    """Export one fp32+int8 bundle per preset into ``out`` with ``edgetl export``; returns seconds per preset."""
    from edgetl.cli import main as edgetl

    seconds = {}
    for preset in presets():
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # stdout is for the folder name
            code = edgetl([*export_arguments(size), "--target", preset, "-o", str(out / f"{preset}.edgetl")])
        if code != 0:
            raise SystemExit(f"arm64_bundles: edgetl export --target {preset} failed (exit {code})")
        seconds[preset] = round(time.perf_counter() - start, 1)
        print(f"arm64_bundles: exported {preset} in {seconds[preset]} s", file=sys.stderr)
    return seconds


def ensure_bundles(size: int = 96, cache: Path = DEFAULT_CACHE) -> Path:
    """The cached bundle folder for this source tree, exported first when missing."""
    final = cache / f"bundles-{cache_key(size)}"
    if (final / "done.json").is_file():
        print(f"arm64_bundles: cached ({final.name})", file=sys.stderr)
        return final
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=cache))
    try:
        seconds = export_all(work, size)
        _test_images(work)
        info = {"size": size, "presets": list(seconds), "export_seconds": seconds}
        (work / "done.json").write_text(json.dumps(info, indent=2) + "\n")
        try:
            work.rename(final)
        except OSError:  # a concurrent run finished first: keep its copy
            if not (final / "done.json").is_file():
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    _prune(cache, final)
    return final


def _prune(cache: Path, keep: Path, recent: int = 2) -> None:
    """Drop bundles of older source trees (all but the ``recent`` newest) and hour-old interrupted exports."""
    done = sorted(
        (p for p in cache.glob("bundles-*") if p.is_dir() and ".tmp-" not in p.name and p != keep),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    stale = [p for p in cache.glob("bundles-*.tmp-*") if time.time() - p.stat().st_mtime > 3600]
    for old in done[recent - 1 :] + stale:
        shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=96, help="square input size in pixels (default 96)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    print(ensure_bundles(args.size, args.cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
