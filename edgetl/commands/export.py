"""``edgetl export`` and ``edgetl inspect``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edgetl.shipped_head import HeadConfig
from edgetl.sources import load_calibration, load_data, parse_classes, source_name
from edgetl.wording import cosine_text, drop_points, drop_text
from edgetl_exporters.quantization import PRESETS, CalibrationMethod, Fp16Config, QuantizeConfig
from edgetl_runtime.arguments import to_precisions
from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.terminal import escape


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("export", help="export a backbone (or fine-tuned run) into one verified .edgetl bundle")
    p.add_argument("model", help="backbone name (e.g. tf_efficientnet_lite0) or an `edgetl finetune` output folder")
    p.add_argument("--weights", default="bundled", help="bundled | hub | none | PATH (ignored for fine-tuned runs)")
    p.add_argument("--precision", default="fp32,int8", help="comma list of fp32, int8, fp16 (fp32 is always included)")
    p.add_argument(
        "--calib",
        default=None,
        help="calibration data: a folder of class folders (few-shot accuracy guard), a folder of unlabelled "
        "images (feature-agreement guard), or fashion-mnist. None: a fine-tuned run's own training data; "
        "needed for int8 otherwise",
    )
    p.add_argument("--calib-count", type=int, default=300, help="images used for int8 calibration")
    p.add_argument(
        "--target",
        "--quant-preset",
        dest="target",
        default="portable",
        choices=list(PRESETS),
        help="the device the int8 model is for: portable = exact and fast on x86 with or without VNNI and on "
        "ARM64 (default); x86-vnni, x86-avx2, arm (onnxruntime CPU, specialised); tensorrt (symmetric int8 "
        "Q/DQ, float biases: what TensorRT builds); host (alias auto) = this exporting machine's CPU",
    )
    p.add_argument(
        "--calib-method",
        default=None,
        choices=[m.value for m in CalibrationMethod],
        help="int8 calibration (default: the preset's; minmax for CPU, percentile for tensorrt)",
    )
    p.add_argument("--eval-count", type=int, default=1000, help="held-out images for the int8 accuracy guard")
    p.add_argument("--max-drop", type=float, default=1.0, help="largest int8 accuracy drop accepted, in points")
    p.add_argument("--image-size", type=int, default=None, help="square input resolution (default: the model's)")
    p.add_argument(
        "--crop-pct",
        type=float,
        default=None,
        help="centre-crop fraction (default: 1.0 = none for a pretrained backbone, the run's own for a fine-tuned one)",
    )
    p.add_argument(
        "--pooling",
        default="auto",
        help="exported features: avg, grid2..grid4, or e.g. avg+grid2 (auto: grid3 for a pretrained backbone, "
        "measured best for few-shot; avg for a fine-tuned run, whose head reads avg features)",
    )
    p.add_argument(
        "--fp16-min-cosine",
        type=float,
        default=Fp16Config.min_cosine,
        help="worst feature cosine of fp16 to fp32 accepted; below it nodes are kept in fp32 automatically",
    )
    p.add_argument(
        "--fp16-keep-ops",
        default="",
        help="comma list of ONNX op types always kept in fp32 in the fp16 model, e.g. Conv,Add",
    )
    p.add_argument(
        "--skip-failed",
        action="store_true",
        help="when int8 or fp16 fails its check, ship the precisions that passed (with a warning) instead of nothing",
    )
    head = p.add_argument_group("shipped head", "a classifier the device predicts with out of the box and extends")
    head.add_argument(
        "--head-from",
        default=None,
        metavar="DATA",
        help="labelled images (fashion-mnist or a folder of class folders) to ship a head for: class statistics of "
        "the bundle's own fp32 features, measured on a held-out part. Default: a fine-tuned run's training data",
    )
    head.add_argument("--head-classes", default=None, help="only these class ids of --head-from, e.g. 0-4 or 0,2,7")
    head.add_argument(
        "--head-per-class", type=int, default=HeadConfig.per_class, help="at most this many images per class"
    )
    head.add_argument(
        "--head-rank", type=int, default=HeadConfig.rank, help="scatter directions kept per class (size vs accuracy)"
    )
    head.add_argument("--no-head", action="store_true", help="ship no head, even for a fine-tuned run")
    p.add_argument("-o", "--output", required=True, type=Path, help="bundle path, e.g. model.edgetl")
    p.set_defaults(func=run_export)

    q = subparsers.add_parser("inspect", help="describe a bundle, or an enrolment file from edgetl-device export")
    q.add_argument("bundle", type=Path, help="an .edgetl bundle or an .enrol enrolment file")
    q.add_argument("--json", action="store_true", help="print the raw manifest JSON")
    q.set_defaults(func=run_inspect)


def run_export(args: argparse.Namespace) -> int:
    from edgetl.export import BundleConfig, export_bundle

    precisions = to_precisions(f"fp32,{args.precision}")
    if args.weights == "none" and not Path(args.model).exists():
        print(
            "edgetl export: warning: --weights none exports random weights: its features mean nothing until "
            "fine-tuned. Use --weights bundled or hub for ImageNet features.",
            file=sys.stderr,
        )
    overrides: dict[str, object] = {"num_calibration": args.calib_count}
    if args.calib_method:
        overrides["calibrate_method"] = args.calib_method
    quantize_config = QuantizeConfig.preset(args.target, **overrides)
    config = BundleConfig(
        precisions,
        args.calib_count,
        args.eval_count,
        args.max_drop,
        pooling=args.pooling,
        crop_pct=args.crop_pct,
        fp16=Fp16Config(args.fp16_min_cosine, tuple(o.strip() for o in args.fp16_keep_ops.split(",") if o.strip())),
        skip_failed=args.skip_failed,
        ship_head=False if args.no_head else None,
        head=HeadConfig(rank=args.head_rank, per_class=args.head_per_class),
    )
    head_data = None
    if args.head_from is not None and not args.no_head:
        head_data = load_data(args.head_from, "train")
        if args.head_classes:
            head_data = head_data.select_classes(parse_classes(args.head_classes))
    result = export_bundle(
        args.model,
        args.output,
        weights=args.weights,
        data=None if args.calib is None else load_calibration(args.calib),
        data_source=None if args.calib is None else source_name(args.calib),
        config=config,
        image_size=args.image_size,
        quantize_config=quantize_config,
        head_data=head_data,
        head_source=None
        if head_data is None
        else f"{source_name(args.head_from)} classes {args.head_classes or 'all'}",
    )
    print(f"wrote {result.path} ({result.path.stat().st_size / 1e6:.1f} MB)")
    print(describe(result.bundle))
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    enrolment = _enrolment_manifest(args.bundle)
    if enrolment is not None:  # an `edgetl-device export` file: verify it and say what it holds
        from edgetl_runtime.enrolment import read_enrolment

        info = read_enrolment(args.bundle).info
        print(json.dumps(info, indent=2) if args.json else describe_enrolment(args.bundle, info))
        return 0
    bundle = Bundle.open(args.bundle)
    print(bundle.manifest.to_json() if args.json else describe(bundle))
    return 0


def _enrolment_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of an enrolment file (recognised by its ``format``), else None: a bundle or not a zip."""
    import zipfile

    from edgetl_runtime.enrolment import ENROLMENT_FORMAT

    try:
        with zipfile.ZipFile(path) as archive:
            info = json.loads(archive.read("manifest.json")[: 1 << 20])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return info if isinstance(info, dict) and info.get("format") == ENROLMENT_FORMAT else None


def describe_enrolment(path: Path, info: dict[str, Any]) -> str:
    """A short view of a verified enrolment file: what `edgetl merge` would fold into a bundle."""
    counts = ", ".join(f"{label} {n}" for label, n in info["counts"].items())
    removed = info.get("removed_shipped_labels") or []
    return "\n".join(
        [
            f"enrolment   {path}  (format {info['format_version']}, every member verified; merge it with "
            "`edgetl merge BUNDLE FILE... -o NEW.edgetl`)",
            f"backbone    {info['backbone']}  precision={info['precision']}  D={info['feature_dim']}",
            f"samples     {info['samples']} in {len(info['counts'])} classes: {counts}",
            f"images      {info['images']} attached (features only travel otherwise)",
            f"removed     shipped classes removed on the device: {', '.join(removed) or 'none'}",
            f"created     {info['created']}   model digest {str(info['model_digest'])[:16]}…",
        ]
    )


def describe(bundle: Bundle) -> str:
    """A short human-readable view of a verified bundle."""
    m = bundle.manifest
    lines = [
        f"bundle      {bundle.path}  (format {m.format_version}, every member verified)",
        f"backbone    {m.backbone.name} [{m.backbone.timm_name}]  weights={m.backbone.weights}",
        f"features    D={m.backbone.feature_dim}  precisions={[p.value for p in m.precisions]}",
        f"preprocess  {_preprocess_line(m.preprocess.to_dict())}",
        f"created     {m.created}   versions: " + ", ".join(f"{k} {v}" for k, v in m.versions.items()),
        "members:",
        *[f"  {name:<22} {info.size / 1e6:8.2f} MB  sha256 {info.sha256[:16]}…" for name, info in m.members.items()],
        f"calibration {_calibration_line(m.calibration)}",
    ]
    if m.quantization:
        q = m.quantization
        excluded = q.get("nodes_to_exclude", [])
        lines.append(
            f"quantization {q.get('quant_format')} act={q.get('activation_type')} weights={q.get('weight_type')} "
            f"per_channel={q.get('per_channel')} reduce_range={q.get('reduce_range')} "
            f"calib={q.get('calibrate_method')} kept in float: {len(excluded)} node(s) (--json: every argument)"
        )
        from edgetl_runtime.backends.int8_targets import int8_targets

        lines.append(f"int8 for    {', '.join(int8_targets(q))}")
        if q.get("guard"):
            lines.append(f"int8 guard  {_guard_line(q['guard'])}")
    for key, value in m.validation.items():
        if key not in ("export", "pooling"):
            lines.append(f"check       {key}: {_summary(value)}")
    if m.head_labels:
        lines.append(f"head        {len(m.head_labels)} classes: {', '.join(m.head_labels)}")
    if m.head:
        lines.append(f"head        {_head_line(m.head)}")
    return "\n".join(escape(line) for line in lines)  # a newline inside a field must not print a forged line


def _preprocess_line(spec: dict[str, Any]) -> str:
    size = "x".join(str(v) for v in spec["input_size"])
    return (
        f"{size} px, crop_pct {spec['crop_pct']}, {spec['interpolation']}, mean {spec['mean']}, std {spec['std']}, "
        f"{spec['channel_order']} {spec['layout']}"
    )


def _calibration_line(calibration: dict[str, Any]) -> str:
    if not calibration:
        return "none (no int8 member)"
    return f"{calibration.get('count')} images from {calibration.get('source')} ({calibration.get('sampling')})"


def _summary(check: object) -> str:
    """One line of the figures a person looks for in a validation entry (``--json`` has everything)."""
    if not isinstance(check, dict):
        return str(check)
    parts = []
    if "size_ratio" in check:
        parts.append(f"size {check['size_ratio']:.3f}x fp32")
    elif "fp16_bytes" in check and check.get("fp32_bytes"):
        parts.append(f"size {check['fp16_bytes'] / check['fp32_bytes']:.3f}x fp32")
    parts += cosine_text(check)
    drop = drop_points(check)
    if drop is not None:
        parts.append(
            f"probe accuracy {check['accuracy_fp32']:.1f} -> {check['accuracy_int8']:.1f} "
            f"({drop_text(drop)}, {check.get('eval_count')} held-out images)"
        )
    if "excluded_nodes" in check:
        parts.append(f"{len(check['excluded_nodes'])} node(s) kept in float")
    if check.get("latency_int8_ms") and check.get("latency_fp32_ms"):
        parts.append(f"batch-1 p50 {check['latency_int8_ms']:.2f} vs fp32 {check['latency_fp32_ms']:.2f} ms")
    return ", ".join(parts) if parts else json.dumps(check, default=str)[:300]


def _guard_line(guard: dict[str, Any]) -> str:
    """The int8 guard's verdict with its interval, e.g. ``drop 0.12 points [−0.31, 0.55] (95 %) ≤ 1.0``."""
    low, high = (float(v) for v in guard.get("interval", [float("nan"), float("nan")]))
    conf = float(guard.get("confidence", 0.95))
    verdict = "passed" if guard.get("passed") else "FAILED"
    if "drop" in guard:
        value = f"{drop_text(guard['drop'])} [{low:+.2f}, {high:+.2f}] ({conf:.0%}), max {guard.get('max_drop')}"
    else:
        mean = float(guard.get("cosine_mean", float("nan")))
        value = f"mean cosine {mean:.4f} [{low:.4f}, {high:.4f}] ({conf:.0%}), min {guard.get('min_cosine')}"
    return f"{verdict}: {value} — {guard.get('kind')}, {guard.get('images')} images"


def _head_line(head: dict[str, Any]) -> str:
    """The shipped head in one line: format, choice, counts, host accuracy per precision, merges."""
    accuracy = head.get("accuracy") or {}
    by_precision = accuracy.get("by_precision") or {}
    measured = ", ".join(f"{p} {100 * v:.1f} %" for p, v in by_precision.items())
    merged = head.get("merged") or {}
    parts = [
        f"{head.get('format')} v{head.get('format_version')}",
        f"{head.get('kind')} alpha={head.get('alpha')}",
        f"{sum((head.get('counts') or {}).values())} samples",
    ]
    if measured:
        parts.append(f"host accuracy {measured} on {accuracy.get('images')} held-out images")
    if merged:
        parts.append(
            f"merged {merged.get('samples_merged')} device samples from {len(merged.get('enrolments', []))} file(s)"
        )
    return "; ".join(parts)
