"""Feature extraction through the runtime against a bare onnxruntime session: where the time goes.

``Learner.features`` on images it has never seen does more than the backbone: it validates and
hashes each image, looks the hashes up in the SQLite cache, preprocesses (resize, crop, normalise),
runs the backbone, and writes the new features back. This measures images/s of that whole path
against the same member, int8 kernel, thread count and batch size in a bare onnxruntime session on
already-preprocessed batches, and times each stage alone, so the ratio is explained, not just given.

Usage::

    .venv/bin/python benchmarks/bench_throughput.py BUNDLE.edgetl [--images 256] [--batch 32] [--threads 2]

Prints the CPU, the precision and kernel the runtime chose, the stage times and the ratio; writes
``runs/bench/throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgetl.datasets import load_fashion_mnist
from edgetl_runtime.backends.cpu import this_cpu
from edgetl_runtime.backends.onnxruntime import make_session
from edgetl_runtime.images import as_image_list, image_digest
from edgetl_runtime.learner import Learner
from edgetl_runtime.preprocess import preprocess_batch


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` calls, in seconds (the least disturbed by other work on a shared machine)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: its own)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each stage keeps its fastest")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/throughput.json"))
    args = parser.parse_args()

    test = load_fashion_mnist("test")
    rounds = [list(test.images[r * args.images : (r + 1) * args.images]) for r in range(args.repeats)]
    with (
        tempfile.TemporaryDirectory() as tmp,
        Learner.load(args.bundle, Path(tmp) / "state.sqlite", threads=args.threads) as learner,
    ):
        spec, backend, selection = learner.bundle.manifest.preprocess, learner.backend, learner.selection
        session = make_session(learner.bundle.model_bytes(backend.precision), args.threads, kernel=backend.kernel)  # type: ignore[attr-defined]
        name = session.get_inputs()[0].name
        batches = [preprocess_batch(rounds[0][i : i + args.batch], spec) for i in range(0, args.images, args.batch)]
        session.run(None, {name: batches[0]})  # warm-up

        def bare() -> None:
            for batch in batches:
                session.run(None, {name: batch})

        stages: dict[str, float] = {"bare_session": best_of(bare, args.repeats)}
        fresh = iter(rounds)  # the runtime must see new images each round: cached ones skip the backbone
        stages["runtime_features"] = best_of(lambda: learner.features(next(fresh)), args.repeats)
        images = as_image_list(rounds[0])
        stages["validate"] = best_of(lambda: as_image_list(rounds[0]), args.repeats)
        stages["hash"] = best_of(lambda: [image_digest(img) for img in images], args.repeats)
        stages["preprocess"] = best_of(
            lambda: [preprocess_batch(images[i : i + args.batch], spec) for i in range(0, args.images, args.batch)],
            args.repeats,
        )
        feats = learner.features(rounds[0])
        keys = [f"bench-{i}" for i in range(args.images)]
        stages["cache_write"] = best_of(
            lambda: learner.store.put_features({k: feats[i] for i, k in enumerate(keys)}), args.repeats
        )
        stages["cache_hit"] = best_of(lambda: learner.features(rounds[0]), args.repeats)

    per_s = {k: args.images / v for k, v in stages.items()}
    result: dict[str, Any] = {
        "cpu": this_cpu().to_dict(),
        "selection": selection.to_dict() if selection else None,
        "images": args.images,
        "batch": args.batch,
        "threads": args.threads,
        "input_size": list(spec.input_size),
        "seconds": stages,
        "images_per_s": per_s,
        "runtime_over_bare": per_s["runtime_features"] / per_s["bare_session"],
    }
    print(f"cpu: {this_cpu().describe()}")
    if selection:
        print(f"runtime chose {selection.precision} (int8 kernel {selection.kernel}): {selection.reason}")
    print(f"{args.images} Fashion-MNIST images at {spec.input_size[0]} px, batch {args.batch}, threads {args.threads}")
    for stage, value in stages.items():
        print(f"  {stage:<17} {value * 1e3:9.1f} ms  {per_s[stage]:9.1f} img/s")
    print(f"runtime / bare onnxruntime images per second: {result['runtime_over_bare']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
