"""Every export and runtime target of this project in one run, judged in one report (``make targets``).

Usage::

    .venv/bin/python benchmarks/bench_targets.py            # the full run (~4.5 min on 2 cores)
    .venv/bin/python benchmarks/bench_targets.py --quick    # ~35 s smoke run: checks the pipeline, not the targets

Writes ``runs/targets/{report.md,targets.json,targets.csv,fewshot.png,latency.png}``. The protocol, the
thresholds and the report are this repository's acceptance harness (``benchmarks/targets``), not part of
the installed package.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from targets.judge import table_rows
from targets.measure import run_targets
from targets.protocol import TargetsConfig

from edgetl.commands.bench import print_table
from edgetl_runtime.cli_args import thread_count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 96 px, 1 seed, K=1,5, 200 test images")
    parser.add_argument("--image-size", type=int, default=None, help="square input size (default 224; --quick: 96)")
    parser.add_argument("--threads", type=thread_count, default=None, help="onnxruntime threads: features + 2nd row")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/targets"), help="where the report goes")
    args = parser.parse_args(argv)
    options: dict[str, object] = {"threads": args.threads, "output_dir": args.output_dir}
    if args.image_size is not None:
        options["image_size"] = args.image_size
    config = TargetsConfig.quick(**options) if args.quick else TargetsConfig(**options)
    result = run_targets(config)
    header, rows = table_rows(result)
    print_table(
        f"edgetl targets ({config.mode}, {config.image_size} px)", header, rows, {"id", "target", "measured", "goal"}
    )
    for kind, path in result["files"].items():
        print(f"wrote {kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
