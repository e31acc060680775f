"""Regenerate the latency figures of one backbone across backends, precisions, batches and threads.

Usage::

    .venv/bin/python benchmarks/bench_latency.py --model tf_efficientnet_lite0 --image-size 224

A thin wrapper over ``edgetl bench latency`` (same options): exports or reuses
``runs/bench/<model>_<size>.edgetl`` and writes ``runs/bench/latency_<model>_<size>.{json,csv,png}``.
"""

from __future__ import annotations

import argparse
import sys

from edgetl.commands.bench import add_latency_arguments, run_latency


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_latency_arguments(parser)
    return run_latency(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
