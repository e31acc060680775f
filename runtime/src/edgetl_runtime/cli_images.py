"""Image files for ``edgetl-device``: folders listed, and each file decoded on its own so one bad file is
named (with every other bad one) instead of failing a whole run with the first."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgetl_runtime.errors import InputError
from edgetl_runtime.images import IMAGE_SUFFIXES, load_image
from edgetl_runtime.terminal import one_line

MAX_LISTED = 20  # bad files named in one error message; the rest are counted


def image_files(folder: Path, *, recursive: bool = False) -> list[Path]:
    """The image files in ``folder`` (and, ``recursive``, in its subfolders), sorted."""
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; pass a folder of images for `add`.")
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"No image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}.")
    return files


def class_folders(folder: Path, label: str | None) -> list[tuple[str, list[Path]]]:
    """``(label, files)`` to enrol: ``folder``'s images under ``label``, or, without a label, one class per
    subfolder that holds images (``photos/cat/*.jpg`` -> ``cat``), like torchvision's ImageFolder."""
    if label is not None or not folder.is_dir():
        return [(label or "", image_files(folder))]
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir())
    groups = [(p.name, image_files(p)) for p in subfolders if any(_images_in(p))]
    if not groups:
        raise InputError(
            f"{folder} has no subfolder of images to name the classes by. Fix: pass --label NAME for the images "
            "in it, or arrange them as one subfolder per class (photos/cat/, photos/dog/)."
        )
    return groups


def _images_in(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]


def files_and_folders(paths: Sequence[Path]) -> list[Path]:
    """Image files as given, folders replaced by the image files in them and their subfolders (sorted)."""
    return [f for p in paths for f in (image_files(p, recursive=True) if p.is_dir() else [p])]


def decode_each(files: Sequence[Path]) -> tuple[list[npt.NDArray[np.uint8]], list[Path], dict[str, str]]:
    """The decoded images and their files, and ``{file: why}`` for each file that could not be read."""
    images, good, bad = [], [], {}
    for f in files:
        try:
            images.append(load_image(f))
        except InputError as exc:
            bad[str(f)] = one_line(str(exc)).split(" Fix:")[0].rstrip(".")  # one fix, said once for all
            continue
        good.append(f)
    return images, good, bad


def bad_files_error(bad: dict[str, str], total: int, what: str) -> InputError:
    """One error naming every unreadable file (the first MAX_LISTED, then a count), and what was done."""
    listed = list(bad.values())[:MAX_LISTED]
    more = f"; and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    return InputError(
        f"{len(bad)} of {total} file(s) are not readable images: {'; '.join(listed)}{more}. {what} "
        "Fix: convert those files to a supported format, or remove them, and run again."
    )
