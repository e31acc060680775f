"""``edgetl-device``: the device-side command line over one bundle and its enrolment state."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgetl_runtime.arguments import MAX_THREADS
from edgetl_runtime.errors import EdgeTLError, InputError
from edgetl_runtime.latency import cpu_info, measure
from edgetl_runtime.learner import Learner

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:  # also a number with more digits than int() converts
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text[:40]!r}")
    return value


def _threads(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_THREADS} threads, got {text[:40]!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgetl-device", description=__doc__)
    parser.add_argument("--bundle", required=True, type=Path, help="the .edgetl bundle")
    parser.add_argument("--state", type=Path, default=None, help="enrolment database (default: BUNDLE.state.sqlite)")
    parser.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "tensorrt"])
    parser.add_argument("--precision", default="best", choices=["best", "int8", "fp16", "fp32"])
    parser.add_argument("--threads", type=_threads, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--head", default="auto", help="auto, ncm, ridge or logistic")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="bundle, backend and enrolled classes")
    add = sub.add_parser("add", help="enrol every image in DIR under one label")
    add.add_argument("dir", type=Path)
    add.add_argument("--label", required=True)
    sub.add_parser("fit", help="refit the head and report leave-one-out quality")
    predict = sub.add_parser("predict", help="classify image files")
    predict.add_argument("files", nargs="+", type=Path)
    predict.add_argument("--reject", action="store_true", help="answer 'unknown' below the calibrated confidence")
    bench = sub.add_parser("bench", help="backbone latency on this device (batch 1)")
    bench.add_argument("--runs", type=_positive_int, default=100)
    remove = sub.add_parser("remove", help="forget a class")
    remove.add_argument("--label", required=True)
    return parser


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; pass a folder of images for `add`.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"No image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}.")
    return files


def run(args: argparse.Namespace) -> dict[str, object]:
    state = args.state or args.bundle.with_suffix(".state.sqlite")
    with Learner.load(
        args.bundle, state, backend=args.backend, precision=args.precision, threads=args.threads, head=args.head
    ) as learner:
        if args.command == "add":
            ids = learner.add(_image_files(args.dir), args.label)
            return {"added": len(ids), "label": args.label, "classes": learner.store.counts()}
        if args.command == "remove":
            return {"removed": learner.remove(label=args.label), "classes": learner.store.counts()}
        if args.command == "fit":
            learner.fit()
            return {"classes": list(learner.classes_), "samples": len(learner.store), "head": repr(learner.head)}
        if args.command == "predict":
            labels = learner.predict(args.files, reject=args.reject)
            proba = learner.predict_proba(args.files).max(axis=1)
            return {
                "predictions": [
                    {"file": str(f), "label": str(lbl), "confidence": round(float(p), 4)}
                    for f, lbl, p in zip(args.files, labels, proba, strict=True)
                ]
            }
        if args.command == "bench":
            size = learner.bundle.manifest.preprocess.input_size
            image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
            stats = measure(lambda: learner.extractor.run_backbone([image]), runs=args.runs, warmup=10)
            return {
                "backend": learner.backend.name,
                "precision": learner.backend.precision.value,
                "latency_ms": stats.to_dict(),
                "cpu": cpu_info(),
            }
        return learner.info()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        print(json.dumps(run(args), indent=2))
    except EdgeTLError as exc:
        print(f"edgetl-device {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
