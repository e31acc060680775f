"""Enrolling one more sample into a 500-sample state, beyond the backbone run.

The 501st image's features are computed first (that is the backbone run); what is timed is the rest
of ``Learner.add``: validation, hashing, the cache hit, the SQLite transaction and the incremental head
update (``partial_fit``). Run: ``python benchmarks/bench_enrol.py runs/bench/tf_efficientnet_lite0_224.edgetl``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from edgetl.datasets import balanced_subset, load_fashion_mnist
from edgetl_runtime.latency import measure
from edgetl_runtime.learner import Learner


def bench(bundle: Path, head: str, state: Path | None, runs: int) -> dict[str, float]:
    data = balanced_subset(load_fashion_mnist("train"), 50 + runs // 10 + 2, seed=0)
    images, labels = list(data.images), [data.classes[i] for i in data.labels]
    with Learner.load(bundle, state, backend="onnxruntime", precision="int8", head=head) as learner:
        learner.features(images)  # every backbone run happens here, before timing
        learner.add(images[:500], labels[:500])
        learner.fit()
        queue = iter(range(500, len(images)))

        def add_one() -> None:
            i = next(queue)
            learner.add(images[i : i + 1], labels[i : i + 1])

        stats = measure(add_one, runs=min(runs, len(images) - 510), warmup=5)
        assert learner.extractor.backbone_runs == len(images)  # nothing re-ran during the timed adds
    return {"p50_ms": stats.p50_ms, "p90_ms": stats.p90_ms, "runs": stats.runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for head in ("auto", "ridge", "ncm"):
            for where, state in (("memory", None), ("sqlite-file", Path(tmp) / f"{head}.sqlite")):
                results[f"{head}/{where}"] = bench(args.bundle, head, state, args.runs)
                print(f"{head:<6} {where:<12} p50 {results[f'{head}/{where}']['p50_ms']:.2f} ms", flush=True)
    out = Path("runs/bench/enrol_one_into_500.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
