"""``edgetl-device``: the device-side command line over one bundle and its enrolment state."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetl_runtime.cli_add import add_classes
from edgetl_runtime.cli_args import (
    add_backend_argument,
    add_precision_argument,
    add_threads_argument,
    positive_int,
)
from edgetl_runtime.cli_images import class_folders, files_and_folders
from edgetl_runtime.cli_output import discard_state, for_the_cli, predictions_csv, reader_gone
from edgetl_runtime.cli_predict import predict_files
from edgetl_runtime.cli_remove import remove_class, restore_class
from edgetl_runtime.errors import EdgeTLError
from edgetl_runtime.learner import Learner
from edgetl_runtime.outputs import check_output
from edgetl_runtime.terminal import escape, escaped_output
from edgetl_runtime.terminal import one_line as joined
from edgetl_runtime.versions import distribution_version


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="edgetl-device",
        description=__doc__,
        formatter_class=fmt,
        epilog="Compare several bundles on this device: edgetl-device compare A.edgetl B.edgetl --data photos/ "
        "[--budget-ms 15] -o cmp/ (see edgetl-device compare --help).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {distribution_version()}")
    parser.add_argument("--bundle", required=True, type=Path, help="the .edgetl bundle written by `edgetl export`")
    parser.add_argument("--state", type=Path, default=None, help="enrolment database (None: BUNDLE.state.sqlite)")
    add_backend_argument(parser)
    add_precision_argument(parser)
    add_threads_argument(parser)
    parser.add_argument(
        "--head",
        default="adaptive",
        help="few-shot head: adaptive (default: auto, adapted to the images predicted so far where its guard allows), "
        "auto (labelled samples only), ncm, ridge, logistic or lda (with a shipped head, adaptive and auto are the "
        "host's choice)",
    )
    parser.add_argument(
        "--no-measure",
        action="store_true",
        help="with --precision best, skip the one-off timing at load: int8 if built for this CPU family, else fp32",
    )
    parser.add_argument(
        "--keep-images",
        default=None,
        metavar="POLICY",
        help="what the state keeps of each enrolled image, so another precision or a re-exported bundle can "
        "re-extract it: 'thumbnail' (shorter side 384 px), a thumbnail size in px, 'original', or 'none' "
        "(features only, for privacy); default: the state's own setting (thumbnail for a new state)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="bundle, backend and enrolled classes", formatter_class=fmt)
    add = sub.add_parser(
        "add", help="enrol every image in DIR under one label, or each subfolder of DIR as a class", formatter_class=fmt
    )
    add.add_argument("dir", type=Path, help="folder of image files (.png, .jpg, ...)")
    add.add_argument(
        "--label",
        default=None,
        help="class name for every image in DIR (None: one class per subfolder of DIR, named by the subfolder)",
    )
    add.add_argument(
        "--skip-duplicates",
        action="store_true",
        help="leave out images enrolled already (same pixels); without it they are enrolled again, with a warning",
    )
    sub.add_parser(
        "fit", help="refit the head and print its leave-one-out accuracy and rejection threshold", formatter_class=fmt
    )
    predict = sub.add_parser(
        "predict",
        help="classify image files, or every image in a folder; an unreadable file is listed under 'failed' and "
        "the others predicted (exit 1; 2 when none could be read)",
        formatter_class=fmt,
    )
    predict.add_argument("files", nargs="+", type=Path, help="image files and/or folders of images (recursed into)")
    predict.add_argument(
        "--format", choices=["json", "csv"], default="json", help="output: one JSON object or CSV rows"
    )
    predict.add_argument(
        "--top-k", type=positive_int, default=1, help="also list the K most probable classes per image"
    )
    predict.add_argument(
        "--reject",
        action="store_true",
        help="answer 'unknown' when an image's similarity to every class is below reject_threshold (both printed)",
    )
    bench = sub.add_parser(
        "bench",
        help="latency of the chosen backend on this device, and where an image's time goes",
        formatter_class=fmt,
    )
    bench.add_argument("--runs", type=positive_int, default=100, help="timed calls")
    bench.add_argument("--warmup", type=positive_int, default=10, help="untimed calls first")
    bench.add_argument("--batch", type=positive_int, default=1, help="images per call")
    bench.add_argument(
        "--image", type=Path, default=None, help="time this photo end to end: decode, preprocess, backbone, head"
    )
    remove = sub.add_parser("remove", help="forget a class (enrolled or shipped with the bundle)", formatter_class=fmt)
    remove.add_argument("--label", required=True, help="class to forget")
    restore = sub.add_parser(
        "restore", help="predict a shipped class again that remove forgot on this device", formatter_class=fmt
    )
    restore.add_argument("--label", required=True, help="shipped class to bring back")
    sub.add_parser(
        "forget-images",
        help="delete every kept image from the state (overwritten on disk) and keep features only from now on; "
        "enrolments stay for the precisions that have their features",
        formatter_class=fmt,
    )
    export = sub.add_parser(
        "export",
        help="write every enrolled sample (features, labels) to one verified file for `edgetl merge` on the host",
        formatter_class=fmt,
    )
    export.add_argument("output", type=Path, help="enrolment file to write, e.g. device-a.enrol")
    export.add_argument(
        "--images",
        nargs="+",
        type=Path,
        default=None,
        help="also attach these image files (or folders) where they match an enrolled sample; without it no image "
        "leaves the device",
    )
    export.add_argument("--force", action="store_true", help="replace OUTPUT if it exists (never the bundle or state)")
    return parser


def _loo_quality(head: Any) -> dict[str, object]:
    """Leave-one-out accuracy of the fitted head on the enrolled samples, and the rejection threshold."""
    inner = getattr(head, "head_", head)  # AutoHead: the head it chose
    rejector = head.rejector_
    prior = getattr(inner, "prior_", None)  # a shipped head's calibration scores come first: not leave-one-out
    shipped = 0 if prior is None else len(prior.calib_scores)
    valid = ~np.isnan(rejector.scores_)
    valid[:shipped] = False
    out: dict[str, object] = {"head_chosen": inner.kind}
    if getattr(head, "loo_accuracy_", None):
        out["loo_accuracy"] = round(head.loo_accuracy_.get(head.kind_, float("nan")), 4)
        out["loo_accuracy_by_head"] = {k: round(v, 4) for k, v in head.loo_accuracy_.items()}
    elif valid.any():  # nearest-class-mean leave-one-out, which every head's rejector computes
        out["loo_accuracy"] = round(float(rejector.correct_[valid].mean()), 4)
    else:
        out["loo_accuracy"] = None
    out["loo_scored_samples"] = int(valid.sum())
    if getattr(head, "adaptation_", None) is not None:
        out["adaptation"] = head.adaptation_
    threshold = float(rejector.threshold_)
    out["reject_threshold"] = round(threshold, 4) if np.isfinite(threshold) else None
    if not valid.any():
        out["note"] = (
            "leave-one-out needs a class with at least 2 images: neither accuracy nor the rejection threshold "
            "could be measured. Fix: enrol more images per class."
        )
    return out


def _print_progress(done: int, total: int) -> None:
    """Re-extraction at load (a precision or bundle the state has no features for): one line per batch."""
    print(f"edgetl-device: features for this model from kept images: {done}/{total}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict[str, object]:
    state = args.state or args.bundle.with_suffix(".state.sqlite")
    if args.command == "export":  # before anything opens: the output must not be an input or a stranger's file
        check_output(args.output, [args.bundle, state, *(args.images or [])], force=args.force)
    groups = class_folders(args.dir, args.label) if args.command == "add" else []  # a wrong folder: no state
    fresh, learner, emptied = not state.exists(), None, False
    try:
        with Learner.load(
            args.bundle,
            state,
            backend=args.backend,
            precision=args.precision,
            threads=args.threads,
            head=args.head,
            measure=not args.no_measure,
            keep_images=args.keep_images,
            progress=_print_progress,
        ) as learner:
            try:
                return _command(args, learner, groups)
            except EdgeTLError:
                emptied = len(learner) == 0
                raise
    except EdgeTLError as exc:
        if fresh and (learner is None or emptied):  # a failed first command leaves no empty state behind
            discard_state(state)
        raise for_the_cli(exc, args.bundle) from None


def _command(args: argparse.Namespace, learner: Learner, groups: list[tuple[str, list[Path]]]) -> dict[str, object]:
    if args.command == "add":
        return add_classes(learner, groups, args)
    if args.command == "remove":
        return remove_class(learner, args.label)
    if args.command == "restore":
        return restore_class(learner, args.label)
    if args.command == "forget-images":
        forgotten = learner.forget_images()
        return {"images_deleted": forgotten, "samples": len(learner), "state": learner.storage()}
    if args.command == "export":
        attach = files_and_folders(args.images) if args.images else None
        enrolment = learner.export_enrolment(args.output, images=attach)
        return {
            "wrote": str(args.output),
            "samples": int(enrolment.info["samples"]),
            "classes": enrolment.counts(),
            "precision": enrolment.info["precision"],
            "model_digest": enrolment.model_digest,
            "images": int(enrolment.info["images"]),
        }
    if args.command == "fit":
        learner.fit()
        head = learner.head
        return {
            "classes": list(learner.classes_),
            "samples": len(learner),
            "head": repr(head),
            **_loo_quality(head),
        }
    if args.command == "predict":
        return predict_files(learner, args)
    if args.command == "bench":
        from edgetl_runtime.cli_bench import bench

        return bench(learner, runs=args.runs, warmup=args.warmup, batch=args.batch, image=args.image)
    return learner.info()


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["compare"]:  # several bundles, no state: its own parser (edgetl_runtime.compare.cli)
        from edgetl_runtime.compare.cli import main as compare_main

        return compare_main(argv[1:])
    args = build_parser().parse_args(argv)

    def one_line(message: Warning | str, *_: object, **__: object) -> None:  # not Python's file:line form
        print(f"edgetl-device {args.command}: warning: {escape(joined(str(message)))}", file=sys.stderr)

    shown = warnings.showwarning
    warnings.showwarning = one_line
    try:
        with escaped_output():  # labels, file names and manifest strings reach a terminal
            try:
                result = run(args)
                listed = result.get("failed")  # predict: the files that could not be read
                failed: list[dict[str, str]] = listed if isinstance(listed, list) else []
                if failed and not result.get("predictions"):  # nothing to print but why: one error line, exit 2
                    why = "; ".join(f"{f['file']}: {f['error']}" for f in failed[:20])
                    print(f"edgetl-device {args.command}: error: {escape(joined(why))}", file=sys.stderr)
                    return 2
                csv_out = getattr(args, "format", "json") == "csv"
                print(predictions_csv(result) if csv_out else json.dumps(result, indent=2), flush=True)
                if failed:  # the others were predicted; the run still failed
                    names = ", ".join(escape(str(f["file"])) for f in failed[:20])
                    print(
                        f"edgetl-device {args.command}: error: {len(failed)} file(s) could not be read "
                        f"(see 'failed' in the output): {names}",
                        file=sys.stderr,
                    )
                    return 1
            except EdgeTLError as exc:
                print(f"edgetl-device {args.command}: error: {escape(joined(str(exc)))}", file=sys.stderr)
                return 2
    except BrokenPipeError:  # `predict ... | head`: the reader left; stop quietly, like other Unix tools
        return reader_gone()
    finally:
        warnings.showwarning = shown
    return 0


if __name__ == "__main__":
    sys.exit(main())
