"""``edgetl-device add DIR --label NAME``: enrol a folder, a batch at a time, after checking every file."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgetl_runtime.cli_images import bad_files_error, decode_each
from edgetl_runtime.cli_remove import duplicate_note
from edgetl_runtime.learner import Learner

# `add DIR` decodes and enrols this many files at a time: a folder of 100k small files decoded at once cost
# +131 MiB before the first enrolment (issue 24, item 10); each batch is one transaction.
ADD_BATCH = 256


def add_classes(learner: Learner, groups: list[tuple[str, list[Path]]], args: argparse.Namespace) -> dict[str, object]:
    """Enrol each ``(label, files)``; every file of every class is checked before anything is enrolled."""
    if args.label is not None:
        return add_folder(learner, groups[0][1], args)
    everything = [f for _, files in groups for f in files]
    bad = {
        k: v
        for start in range(0, len(everything), ADD_BATCH)
        for k, v in decode_each(everything[start : start + ADD_BATCH])[2].items()
    }
    if bad:
        raise bad_files_error(bad, len(everything), "Nothing was enrolled.")
    out: dict[str, object] = {"added": {}, "classes": {}}
    notes = [f"no --label: one class per subfolder of {args.dir} ({len(groups)}: {', '.join(g for g, _ in groups)})"]
    for label, files in groups:
        one = add_folder(
            learner, files, argparse.Namespace(label=label, skip_duplicates=args.skip_duplicates), checked=True
        )
        out["added"][label] = one["added"]  # type: ignore[index]
        notes += [f"{label}: {one['note']}"] if "note" in one else []
    out["classes"] = learner.counts()
    out["note"] = "; ".join(notes)
    return out


def add_folder(
    learner: Learner, files: list[Path], args: argparse.Namespace, *, checked: bool = False
) -> dict[str, object]:
    """Enrol ``files`` under ``args.label``. Every file is decoded before anything is enrolled, so a folder
    with bad files is refused whole, naming each of them (the first batch's pixels are kept, not decoded twice);
    ``checked``: the caller has decoded every file already, so that check is not run again."""
    batches = [files[start : start + ADD_BATCH] for start in range(0, len(files), ADD_BATCH)]
    bad: dict[str, str] = {}
    first: list[npt.NDArray[np.uint8]] | None = None
    for i, batch in enumerate(batches if not checked else []):
        images, _, failed = decode_each(batch)
        bad.update(failed)
        first = images if i == 0 else first
    if bad:
        raise bad_files_error(bad, len(files), "Nothing was enrolled.")
    added, restored, already, by_head = 0, 0, 0, 0
    for i, batch in enumerate(batches):  # decoded a batch at a time, not the whole folder
        images = first if i == 0 and first is not None else decode_each(batch)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reported in the output instead
            enrolled = learner.enrol(images, args.label, skip_duplicates=args.skip_duplicates)
        added, restored = added + enrolled.added, restored + enrolled.restored
        already, by_head = already + enrolled.duplicates, by_head + enrolled.counted_by_shipped_head
    out: dict[str, object] = {"added": added, "label": args.label, "classes": learner.counts()}
    if restored:
        out["restored"] = restored  # enrolled before, kept as features only under another model
    if already > 0:
        out["already_enrolled"] = already
        out["note"] = (
            f"{already} image(s) were enrolled already and were skipped"
            if args.skip_duplicates
            else duplicate_note(learner, args.label, already)
        )
    if by_head and not args.skip_duplicates:
        out["counted_by_shipped_head"] = by_head
        note = f"{by_head} image(s) are counted by the bundle's shipped head (fitted on them): kept, not again"
        if already > by_head:
            note += f"; {already - by_head} other(s) were enrolled already and count twice (--skip-duplicates)"
        out["note"] = note
    return out
