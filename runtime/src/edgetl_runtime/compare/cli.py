"""``edgetl-device compare``: which bundle, input size and precision to run on this device, from the bundles alone."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from edgetl_runtime.cli_args import PRECISIONS, add_backend_argument, add_threads_argument, comma_list, positive_int
from edgetl_runtime.compare.config import CompareConfig


def add_compare_arguments(parser: argparse.ArgumentParser, with_precisions: bool = True) -> None:
    """The comparison's options (shared with ``edgetl bench backbones``, which names its own precisions)."""
    parser.add_argument("--data", type=Path, required=True, help="labelled folder: one subfolder of images per class")
    parser.add_argument("--budget-ms", type=float, default=None, help="batch-1 p50 latency budget on this device")
    parser.add_argument("--shots", type=comma_list(positive_int), default="1,5", help="K: images enrolled per class")
    parser.add_argument("--splits", type=int, default=20, help="random splits per K (the spread comes from them)")
    parser.add_argument("--no-all-but-one", action="store_true", help="skip the all-but-one (leave-one-out) column")
    parser.add_argument("--head", default="auto", help="device head fitted per split: auto, ncm, ridge, logistic, lda")
    parser.add_argument("--rank-shots", type=positive_int, default=None, help="K to rank by (default: largest K)")
    if with_precisions:
        parser.add_argument("--precisions", type=comma_list(str, PRECISIONS), default=None,
                            help="precisions to compare (default: every one each bundle ships)")  # fmt: skip
    parser.add_argument("--batch-size", type=positive_int, default=8, help="batch size for images per second")
    parser.add_argument("--processes", type=positive_int, default=4,
                        help="fresh processes per option (interleaved): the p50 and its interval")  # fmt: skip
    parser.add_argument("--runs", type=positive_int, default=100, help="timed batch-1 runs per process (as bench)")
    parser.add_argument("--max-seconds", type=float, default=4.0, help="timing cap per process (after 10 runs)")
    parser.add_argument("--no-probe", action="store_true",
                        help="time in this process: quicker, no cold start or memory, not bench's")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the random splits")
    add_backend_argument(parser)
    add_threads_argument(parser)
    parser.add_argument("-o", "--output-dir", type=Path, default=Path("cmp"), help="report.md, results.json, PNG")


def config_from(args: argparse.Namespace) -> CompareConfig:
    return CompareConfig(
        budget_ms=args.budget_ms, shots=args.shots, all_but_one=not args.no_all_but_one, splits=args.splits,
        head=args.head, rank_shots=args.rank_shots, batch_size=args.batch_size,
        processes=args.processes, runs=args.runs,
        max_seconds=args.max_seconds, threads=args.threads, precisions=getattr(args, "precisions", None),
        backend=args.backend, probe=not args.no_probe, seed=args.seed,
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgetl-device compare", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "bundles", nargs="+", type=Path, help=".edgetl bundles or folders of them (each at every precision it ships)"
    )
    add_compare_arguments(parser)
    return parser


def progress_line(stage: str, done: int, total: int) -> None:
    """One stderr line per step: a device has no terminal to redraw a bar on, often."""
    print(f"edgetl-device compare: {stage} {done}/{total}", file=sys.stderr, flush=True)


def main(argv: Sequence[str]) -> int:
    """Parse, compare, print the recommendation and where the report is; errors are one line (exit 2)."""
    from edgetl_runtime.compare.run import compare_bundles
    from edgetl_runtime.errors import EdgeTLError

    args = build_parser().parse_args(argv)

    def one_line(message: Warning | str, *_: object, **__: object) -> None:  # not Python's file:line form
        print(f"edgetl-device compare: warning: {message}", file=sys.stderr)

    shown, warnings.showwarning = warnings.showwarning, one_line
    try:
        comparison = compare_bundles(args.bundles, args.data, config_from(args), args.output_dir, progress_line)
    except EdgeTLError as exc:
        message = " ".join(line.strip() for line in str(exc).splitlines())
        print(f"edgetl-device compare: error: {message}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = shown
    for problem in comparison.problems:
        print(f"edgetl-device compare: warning: {problem.subject}: {problem.reason}", file=sys.stderr)
    print(f"CPU: {comparison.environment.get('cpu_line', '?')}")
    print(comparison.recommendation.text)
    print(f"{len(comparison.options)} options compared in {comparison.wall_s:.0f} s")
    for kind, path in comparison.files.items():
        print(f"wrote {kind}: {path}")
    return 0
