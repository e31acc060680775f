"""Enrolling one more sample into a 500-sample state, beyond the backbone run.

The images' features are computed first (that is the backbone run); what is timed is the rest of
``Learner.add`` (see :func:`targets.enrol.enrol_one_latency`; ``benchmarks/bench_targets.py`` runs the same
measurement as target 6). Run: ``python benchmarks/bench_enrol.py runs/bench/tf_efficientnet_lite0_224.edgetl``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from targets.enrol import enrol_one_latency

from edgetl.datasets import balanced_subset, load_fashion_mnist


def bench(bundle: Path, head: str, state: Path | None, runs: int) -> dict[str, Any]:
    """One head and state location; the int8 backbone computes every feature before timing."""
    data = balanced_subset(load_fashion_mnist("train"), 50 + runs // 10 + 2, seed=0)
    images, labels = list(data.images), [data.classes[i] for i in data.labels]
    runs = min(runs, len(images) - 510)
    return enrol_one_latency(bundle, images, labels, head=head, state=state, runs=runs, precision="int8")


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
