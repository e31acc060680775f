"""The user's labelled folder (one subfolder per class), and which K each class can be scored at."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgetl_runtime.compare.config import ALL_BUT_ONE, CompareConfig
from edgetl_runtime.errors import DatasetError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class LabelledFolder:
    """Image files and their class index (classes sorted by folder name); nothing decoded yet."""

    root: Path
    files: tuple[Path, ...]
    labels: npt.NDArray[np.int64]  # (N,)
    classes: tuple[str, ...]
    problems: tuple[str, ...] = field(default=())  # what the accuracy half cannot use, named in the report

    def counts(self) -> dict[str, int]:
        return {c: int((self.labels == i).sum()) for i, c in enumerate(self.classes)}


def read_folder(root: str | Path) -> LabelledFolder:
    """List ``root``'s class folders and their image files; a folder with nothing to compare is an error."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"--data {root} is not a folder. Fix: pass a folder with one subfolder of images per class.")
    files: list[Path] = []
    labels: list[int] = []
    classes: list[str] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            labels += [len(classes)] * len(images)
            classes.append(folder.name)
            files += images
    if not files:
        raise DatasetError(
            f"--data {root} holds no class subfolders with images ({', '.join(sorted(IMAGE_SUFFIXES))}). "
            "Fix: put each class's images in its own subfolder, e.g. photos/cat/*.jpg, photos/dog/*.jpg."
        )
    out = LabelledFolder(root, tuple(files), np.asarray(labels, dtype=np.int64), tuple(classes))
    return LabelledFolder(out.root, out.files, out.labels, out.classes, tuple(folder_problems(out)))


def folder_problems(data: LabelledFolder) -> list[str]:
    """Why the few-shot accuracy cannot be measured at all, if it cannot (one line each)."""
    usable = [c for c, n in data.counts().items() if n >= 2]
    if len(data.classes) < 2:
        return [
            f"the folder has one class ({data.classes[0]!r}): few-shot accuracy needs at least two. "
            "Fix: add a subfolder per class."
        ]
    if len(usable) < 2:
        return ["fewer than two classes have 2 or more images: nothing can be enrolled and queried"]
    return []


def scorable_shots(counts: dict[str, int], config: CompareConfig) -> tuple[list[str], list[str]]:
    """The accuracy columns these class counts support (``K=1``, ``all-but-one`` ...) and why any other is skipped.

    K needs K + 1 images in every class (K enrolled, at least one queried); all-but-one needs 2.
    """
    columns, skipped = [], []
    for k in config.shots:
        short = {c: n for c, n in counts.items() if n < k + 1}
        if short:
            named = ", ".join(f"{c!r} has {n}" for c, n in list(short.items())[:5])
            more = f" and {len(short) - 5} more" if len(short) > 5 else ""
            skipped.append(f"K={k} not scored: it needs {k + 1} images in every class; {named}{more}")
        else:
            columns.append(f"K={k}")
    if config.all_but_one:
        short = {c: n for c, n in counts.items() if n < 2}
        if short:
            skipped.append(f"{ALL_BUT_ONE} not scored: it needs 2 images in every class; {', '.join(map(repr, short))} "
                           "has 1")  # fmt: skip
        else:
            columns.append(ALL_BUT_ONE)
    return columns, skipped
