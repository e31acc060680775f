"""``edgetl bench ...``: measurements, each a thin wrapper over one ``edgetl.bench`` function."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edgetl_runtime.cli_args import PRECISIONS, comma_list, positive_int, thread_count

if TYPE_CHECKING:
    from edgetl.bench.latency_config import LatencyBenchResult


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("bench", help="reproducible measurements that write JSON/CSV + PNG")
    bench_sub = p.add_subparsers(dest="bench_command", required=True)
    q = bench_sub.add_parser("latency", help="latency across backends, precisions, batches and threads vs. peak")
    add_latency_arguments(q)
    q.set_defaults(func=run_latency)
    register_fewshot(bench_sub)
    register_backbones(bench_sub)


def register_backbones(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from edgetl_runtime.compare.cli import add_compare_arguments

    q = bench_sub.add_parser(
        "backbones", help="export backbones x sizes x precisions, compare them here as edgetl-device compare does"
    )
    q.add_argument("--backbones", type=comma_list(str), default="tf_efficientnet_lite0,tf_efficientnet_lite1,"
                   "tf_efficientnet_lite2", help="candidate backbones (registry or timm names)")  # fmt: skip
    q.add_argument("--sizes", type=comma_list(positive_int), default="160,224", help="input sizes (multiples of 32)")
    q.add_argument("--export-precisions", type=comma_list(str, PRECISIONS), default="fp32,int8",
                   help="precisions each bundle ships (every one is compared)")  # fmt: skip
    q.add_argument("--weights", default="bundled", help="bundled | hub | none | PATH")
    add_compare_arguments(q, with_precisions=False)
    q.set_defaults(func=run_backbones)


def run_backbones(args: argparse.Namespace) -> int:
    from edgetl.bench.backbones import BackboneBenchConfig, run_backbone_bench
    from edgetl_runtime.compare.cli import config_from

    config = BackboneBenchConfig(args.backbones, args.sizes, args.export_precisions, args.weights, config_from(args))
    result = run_backbone_bench(args.data, args.output_dir, config, progress=True)
    for note in result.notes:
        print(f"note: {note}")
    for problem in result.comparison.problems:
        print(f"warning: {problem.subject}: {problem.reason}")
    print(result.comparison.recommendation.text)
    print(f"exports {result.export_seconds:.0f} s, comparison {result.comparison.wall_s:.0f} s, "
          f"total {result.wall_s:.0f} s")  # fmt: skip
    print(f"on the device: edgetl-device compare {args.output_dir / 'bundles'} --data {args.data} -o cmp-device/")
    for kind, path in result.comparison.files.items():
        print(f"wrote {kind}: {path}")
    return 0


def register_fewshot(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    q = bench_sub.add_parser("fewshot", help="accuracy vs K per head (vs SimpleShot), fp32 vs int8; fit time")
    q.add_argument("bundle", type=Path, help="an .edgetl bundle (fp32, plus int8 to compare)")
    q.add_argument("--data", default="fashion-mnist", help="fashion-mnist or an image folder (train/test split)")
    q.add_argument("--shots", type=comma_list(positive_int), default="1,5,10,20", help="K: images per class enrolled")
    q.add_argument("--seeds", type=int, default=5, help="episodes (random draws of the K shots) per K")
    q.add_argument("--pool-per-class", type=int, default=100, help="train images per class the shots come from")
    q.add_argument("--test-count", type=int, default=2000, help="fixed test images scored in every episode")
    q.add_argument("--precisions", type=comma_list(str, PRECISIONS), default="fp32,int8", help="bundle precisions")
    q.add_argument("--threads", type=thread_count, default=2, help="onnxruntime threads for the features")
    q.add_argument("--output-dir", type=Path, default=Path("runs/bench"), help="where the JSON/CSV/PNG go")
    q.set_defaults(func=run_fewshot)


def run_fewshot(args: argparse.Namespace) -> int:
    from edgetl.bench.fewshot import FewShotBenchConfig, run_fewshot_bench
    from edgetl.datasets import stratified_split
    from edgetl.sources import is_fashion_mnist, load_data

    options = ("shots", "seeds", "pool_per_class", "test_count", "precisions", "threads", "output_dir")
    config = FewShotBenchConfig(**{name: getattr(args, name) for name in options})
    if is_fashion_mnist(args.data):
        train, test = load_data(args.data, "train"), load_data(args.data, "test")
    else:
        train, test = stratified_split(load_data(args.data), [0.7, 0.3], seed=0)
    result = run_fewshot_bench(args.bundle, train, test, config)
    for key, by_k in result.summary.items():
        print(f"{key:<24} " + "  ".join(f"{k} {v:5.1f}" for k, v in by_k.items()))
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {config.output_dir / ('fewshot_' + args.bundle.stem)}.json, .csv, .png")
    return 0


def add_latency_arguments(p: argparse.ArgumentParser) -> None:
    """The latency options, shared with ``benchmarks/bench_latency.py``."""
    from edgetl.bench.latency_config import BACKENDS

    p.add_argument("bundle", nargs="?", type=Path, help="an .edgetl bundle; omit it to export --model first")
    p.add_argument("--model", default="tf_efficientnet_lite0", help="backbone to export when no bundle is given")
    p.add_argument("--weights", default="bundled", help="weights for that export: bundled | hub | none | PATH")
    p.add_argument("--image-size", type=int, default=None, help="square input size (must match a given bundle)")
    p.add_argument("--export-precision", type=comma_list(str, PRECISIONS), default="fp32,int8",
                   help="precisions to export when no bundle is given")  # fmt: skip
    p.add_argument("--backends", type=comma_list(str, BACKENDS), default=",".join(BACKENDS),
                   help="absent ones are listed as skipped")  # fmt: skip
    p.add_argument("--precisions", type=comma_list(str, PRECISIONS), default="fp32,fp16,int8",
                   help="bundle precisions to time (where shipped)")  # fmt: skip
    p.add_argument("--batch-sizes", type=comma_list(positive_int), default="1,8,32", help="batch sizes to time")
    p.add_argument("--threads", type=comma_list(thread_count), default="1,2",
                   help="intra-op thread counts (torch and onnxruntime CPU)")  # fmt: skip
    p.add_argument("--runs", type=int, default=100, help="timed calls per cell (fewer if --max-seconds cuts it)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs before timing")
    p.add_argument("--max-seconds", type=float, default=4.0, help="timed-time cap per cell, after 10 calls")
    p.add_argument("--no-probe", action="store_true", help="skip the fresh-process cold-start / peak-RSS probes")
    p.add_argument("--output-dir", type=Path, default=Path("runs/bench"), help="where the JSON/CSV/PNG go")


def run_latency(args: argparse.Namespace) -> int:
    from edgetl.bench.latency_config import LatencyBenchConfig
    from edgetl.bench.latency_table import run_latency_bench
    from edgetl.export import ensure_bundle

    options = ("backends", "precisions", "batch_sizes", "threads", "runs", "warmup", "max_seconds", "image_size")
    config = LatencyBenchConfig(
        **{name: getattr(args, name) for name in options}, output_dir=args.output_dir, probe=not args.no_probe
    )
    bundle, notes = args.bundle, list[str]()
    if bundle is None:
        bundle, notes = ensure_bundle(args.model, args.output_dir, image_size=args.image_size,
                                           weights=args.weights, precisions=args.export_precision)  # fmt: skip
    result = run_latency_bench(bundle, config)
    print_result(result, notes)
    return 0


def print_result(result: LatencyBenchResult, notes: list[str]) -> None:
    """The cells as a table (rich when installed), then what was skipped and where the files are."""
    from edgetl.bench.latency_report import table

    header, rows = table(result)
    print_table(f"{result.model} @ {result.image_size}px", header, rows, left={"backend", "prec"})
    for row in result.preprocess:
        print(f"preprocess {row.source} -> {row.target}: p50 {row.stats.p50_ms:.2f} ms/image ({row.stats.runs} runs)")
    for cell in {c.key: c for c in result.cells if c.golden_passed is False}.values():
        print(f"warning: {cell.backend} {cell.precision} failed the golden check (min cosine "
              f"{cell.golden_min_cosine:.4f}); its latency is real, its features are suspect")  # fmt: skip
    for skip in result.skipped:
        print(f"skipped {skip.backend} {skip.precision}: {skip.reason}")
    for note in notes:
        print(f"note: {note}")
    for kind, path in result.files.items():
        print(f"wrote {kind}: {path}")


def print_table(title: str, header: list[str], rows: list[list[str]], left: set[str]) -> None:
    """A rich table when rich is installed, else aligned plain text; ``left`` names left-aligned columns."""
    try:
        from rich.console import Console
        from rich.table import Table

        out = Table(title=title)
        for name in header:
            out.add_column(name, justify="left" if name in left else "right")
        for row in rows:
            out.add_row(*row)
        Console(width=None if sys.stdout.isatty() else 200).print(out)
    except ImportError:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        print(title)
        for row in [header, *rows]:
            cells = zip(row, widths, header, strict=True)
            print("  ".join(v.ljust(w) if name in left else v.rjust(w) for v, w, name in cells))
