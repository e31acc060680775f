"""``edgetl merge``: fold devices' enrolment files into a new bundle whose head knows every class."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "merge",
        help="fold devices' enrolments (edgetl-device export) and the shipped head into a new bundle",
        description="Only features travel; the backbone members are copied unchanged, so every device's state "
        "(keyed by the model digest) stays valid on the new bundle.",
    )
    p.add_argument("bundle", type=Path, help="the bundle the devices were running")
    p.add_argument("enrolments", nargs="+", type=Path, help="enrolment files written by `edgetl-device export`")
    p.add_argument("-o", "--output", required=True, type=Path, help="the new bundle, e.g. merged.edgetl")
    p.add_argument(
        "--on-conflict",
        default="drop",
        choices=["drop", "error"],
        help="an image enrolled under two labels: leave every copy out (reported), or refuse the merge",
    )
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it exists (never an input)")
    p.add_argument("--rank", type=int, default=None, help="scatter rows kept per class (default: the shipped head's)")
    p.add_argument(
        "--precision",
        default=None,
        choices=["fp32", "fp16", "int8"],
        help="accept only enrolments made with this precision (default: any model the bundle ships)",
    )
    p.set_defaults(func=run_merge)


def run_merge(args: argparse.Namespace) -> int:
    from edgetl.merge import MergeConfig, merge_enrolments
    from edgetl_runtime.outputs import check_output

    check_output(args.output, [args.bundle, *args.enrolments], force=args.force)
    config = MergeConfig(rank=args.rank, on_conflict=args.on_conflict, precision=args.precision)
    result = merge_enrolments(args.bundle, args.enrolments, args.output, config)
    report = result.report
    print(f"wrote {result.path} ({result.path.stat().st_size / 1e6:.1f} MB)")
    print(
        f"merged {report['samples_merged']} of {report['samples_in']} samples from {len(report['enrolments'])} "
        f"file(s): {report['duplicates_counted_once']} duplicate(s) counted once, "
        f"{len(report['conflicts_left_out'])} conflict(s) left out, {report['already_in_head']} already in the head"
    )
    print(f"classes     {json.dumps(report['classes'])}")
    if report["new_classes"]:
        print(f"new         {', '.join(report['new_classes'])}")
    for conflict in report["conflicts_left_out"][:10]:
        print(f"conflict    image {conflict['key']}… under {conflict['labels']} in {', '.join(conflict['files'])}")
    if report["compressed_classes"]:
        print(
            f"compressed  {', '.join(report['compressed_classes'])} (scatter kept to rank {args.rank or 'of the head'})"
        )
    if report["removed_shipped_on_devices"]:
        print(
            f"note        devices removed shipped classes {report['removed_shipped_on_devices']}; they stay in the head"
        )
    return 0
