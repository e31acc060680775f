"""``edgetl bench ...``: measurements, each a thin wrapper over one ``edgetl.bench`` function."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edgetl_runtime.errors import ConfigError, EdgeTLError

if TYPE_CHECKING:
    from edgetl.bench.latency_config import LatencyBenchResult


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("bench", help="reproducible measurements that write JSON/CSV + PNG")
    bench_sub = p.add_subparsers(dest="bench_command", required=True)
    register_latency(bench_sub)
    register_fewshot(bench_sub)
    register_targets(bench_sub)


def register_targets(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    q = bench_sub.add_parser(
        "targets", help="every export + runtime target in one run: targets.json/.csv, report.md, PNGs"
    )
    q.add_argument("--quick", action="store_true", help="smoke run: 96 px, 1 seed, K=1,5, 200 test images")
    q.add_argument("--image-size", type=int, default=None, help="square input size (default 224; --quick: 96)")
    q.add_argument("--threads", type=int, default=None, help="onnxruntime threads for features + 2nd latency row")
    q.add_argument("--output-dir", type=Path, default=Path("runs/targets"), help="where the report and files go")
    q.set_defaults(func=run_targets)


def run_targets(args: argparse.Namespace) -> int:
    from edgetl.bench.targets import TargetsConfig, run_targets
    from edgetl.bench.targets_judge import table_rows

    options = {"threads": args.threads, "output_dir": args.output_dir}
    if args.image_size is not None:
        options["image_size"] = args.image_size
    config = TargetsConfig.quick(**options) if args.quick else TargetsConfig(**options)
    result = run_targets(config)
    header, rows = table_rows(result)
    print_table(
        f"edgetl targets ({config.mode}, {config.image_size} px)",
        header,
        rows,
        left={"id", "target", "measured", "goal"},
    )
    for kind, path in result["files"].items():
        print(f"wrote {kind}: {path}")
    return 0


def register_fewshot(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    q = bench_sub.add_parser("fewshot", help="accuracy vs K per head (vs sklearn, SimpleShot), fp32 vs int8; fit time")
    q.add_argument("bundle", type=Path, help="an .edgetl bundle (fp32, plus int8 to compare)")
    q.add_argument("--data", default="fashion-mnist", help="fashion-mnist or an image folder (train/test split)")
    q.add_argument("--shots", default="1,5,10,20", help="comma list of K (images per class enrolled)")
    q.add_argument("--seeds", type=int, default=5, help="episodes (random draws of the K shots) per K")
    q.add_argument("--pool-per-class", type=int, default=100, help="train images per class the shots come from")
    q.add_argument("--test-count", type=int, default=2000, help="fixed test images scored in every episode")
    q.add_argument("--precisions", default="fp32,int8", help="bundle precisions to compare (where shipped)")
    q.add_argument("--threads", type=int, default=2, help="onnxruntime threads for the features")
    q.add_argument("--output-dir", type=Path, default=Path("runs/bench"), help="where the JSON/CSV/PNG go")
    q.set_defaults(func=run_fewshot)


def run_fewshot(args: argparse.Namespace) -> int:
    from edgetl.bench.fewshot import FewShotBenchConfig, run_fewshot_bench
    from edgetl.datasets import stratified_split
    from edgetl.sources import load_data

    config = FewShotBenchConfig(
        shots=_list(args.shots, int),
        seeds=args.seeds,
        pool_per_class=args.pool_per_class,
        test_count=args.test_count,
        precisions=_list(args.precisions),
        threads=args.threads,
        output_dir=args.output_dir,
    )
    if args.data == "fashion-mnist":
        train, test = load_data(args.data, "train"), load_data(args.data, "test")
    else:
        train, test = stratified_split(load_data(args.data), [0.7, 0.3], seed=0)
    result = run_fewshot_bench(args.bundle, train, test, config)
    for key, by_k in result["summary"].items():
        print(f"{key:<24} " + "  ".join(f"{k} {v:5.1f}" for k, v in by_k.items()))
    return 0


def register_latency(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    q = bench_sub.add_parser("latency", help="latency across backends, precisions, batches and threads vs. peak")
    add_latency_arguments(q)
    q.set_defaults(func=run_latency)


def add_latency_arguments(p: argparse.ArgumentParser) -> None:
    """The latency options, shared with ``benchmarks/bench_latency.py``."""
    from edgetl.bench.latency_config import BACKENDS

    p.add_argument("bundle", nargs="?", type=Path, help="an .edgetl bundle; omit it to export --model first")
    p.add_argument("--model", default="tf_efficientnet_lite0", help="backbone to export when no bundle is given")
    p.add_argument("--weights", default="bundled", help="weights for that export: bundled | hub | none | PATH")
    p.add_argument("--image-size", type=int, default=None, help="square input size (must match a given bundle)")
    p.add_argument("--export-precision", default="fp32,int8", help="precisions to export when no bundle is given")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma list; absent ones are listed as skipped")
    p.add_argument("--precisions", default="fp32,fp16,int8", help="bundle precisions to time (where shipped)")
    p.add_argument("--batch-sizes", default="1,8,32", help="comma list of batch sizes to time")
    p.add_argument("--threads", default="1,2", help="intra-op thread counts (torch and onnxruntime CPU)")
    p.add_argument("--runs", type=int, default=100, help="timed calls per cell (fewer if --max-seconds cuts it)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs before timing")
    p.add_argument("--max-seconds", type=float, default=4.0, help="timed-time cap per cell, after 10 calls")
    p.add_argument("--no-probe", action="store_true", help="skip the fresh-process cold-start / peak-RSS probes")
    p.add_argument("--output-dir", type=Path, default=Path("runs/bench"), help="where the JSON/CSV/PNG go")


def _list(text: str, cast: type = str) -> tuple:  # type: ignore[type-arg]
    try:
        return tuple(cast(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"Expected a comma list of {cast.__name__} values, got {text!r}.") from None


def run_latency(args: argparse.Namespace) -> int:
    from edgetl.bench.latency import run_latency_bench
    from edgetl.bench.latency_config import LatencyBenchConfig

    config = LatencyBenchConfig(
        backends=_list(args.backends),
        precisions=_list(args.precisions),
        batch_sizes=_list(args.batch_sizes, int),
        threads=_list(args.threads, int),
        runs=args.runs,
        warmup=args.warmup,
        max_seconds=args.max_seconds,
        image_size=args.image_size,
        output_dir=args.output_dir,
        probe=not args.no_probe,
    )
    bundle, notes = args.bundle, []
    if bundle is None:
        bundle, notes = prepare_bundle(
            args.model, args.output_dir, image_size=args.image_size, weights=args.weights,
            precisions=_list(args.export_precision),
        )  # fmt: skip
    result = run_latency_bench(bundle, config)
    print_result(result, notes)
    return 0


def print_result(result: LatencyBenchResult, notes: list[str]) -> None:
    """The cells as a table (rich when installed), then what was skipped and where the files are."""
    from edgetl.bench.report import table

    header, rows = table(result)
    print_table(f"{result.model} @ {result.image_size}px", header, rows, left={"backend", "prec"})
    for row in result.preprocess:
        print(f"preprocess {row['source']} -> {row['target']}: p50 {row['p50_ms']:.2f} ms/image ({row['runs']} runs)")
    for cell in {(c["backend"], c["precision"]): c for c in result.cells if c["golden_passed"] is False}.values():
        print(f"warning: {cell['backend']} {cell['precision']} failed the golden check (min cosine "
              f"{cell['golden_min_cosine']:.4f}); its latency is real, its features are suspect")  # fmt: skip
    for skip in result.skipped:
        print(f"skipped {skip['backend']} {skip['precision']}: {skip['reason']}")
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


def prepare_bundle(
    model: str,
    output_dir: Path,
    *,
    image_size: int | None = None,
    weights: str = "bundled",
    precisions: tuple[str, ...] = ("fp32", "int8"),
) -> tuple[Path, list[str]]:
    """Reuse ``output_dir/<model>[_<size>].edgetl`` when it has ``precisions``, else export it.

    If quantization fails, an fp32-only bundle is benchmarked instead; the returned notes say why.
    """
    from edgetl.datasets import load_fashion_mnist
    from edgetl.export import BundleConfig, export_bundle
    from edgetl_runtime.bundle import Bundle
    from edgetl_runtime.manifest import Precision

    try:
        wanted = tuple(dict.fromkeys(Precision(p) for p in ("fp32", *precisions)))
    except ValueError:
        raise ConfigError(f"Unknown export precision in {list(precisions)}; choose from fp32, int8, fp16.") from None
    path = Path(output_dir) / f"{model}{'' if image_size is None else f'_{image_size}'}.edgetl"
    if path.is_file() and set(wanted) <= set(Bundle.open(path).manifest.precisions):
        return path, []
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        calib = load_fashion_mnist("train") if Precision.INT8 in wanted else None  # what the latency bench times
        export_bundle(model, path, weights=weights, data=calib, data_source="fashion-mnist:train" if calib else None,
                      config=BundleConfig(precisions=wanted), image_size=image_size)  # fmt: skip
        return path, []
    except (EdgeTLError, ImportError) as exc:
        if wanted == (Precision.FP32,):
            raise
        note = f"exporting {[p.value for p in wanted]} failed ({type(exc).__name__}: {exc}); benchmarking fp32 only"
    export_bundle(
        model, path, weights=weights, config=BundleConfig(precisions=(Precision.FP32,)), image_size=image_size
    )
    return path, [note]
