"""Where images come from: what a user names with ``--data`` / ``--calib`` read into datasets, the
fine-tuning splits drawn from it, and the images an export calibrates and checks on.

A source is ``fashion-mnist`` (or an alias), a folder of class folders, a folder of train/ + val/
(+ test/) split folders, or, for calibration only, a folder of unlabelled images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.datasets import (
    ImageDataset,
    balanced_subset,
    folder_layout,
    k_shot,
    load_fashion_mnist,
    load_image_folder,
    load_image_splits,
    load_unlabelled_folder,
    stratified_split,
)
from edgetl_runtime.bundle.manifest import Precision
from edgetl_runtime.errors import ConfigError, DatasetError
from edgetl_runtime.images import IMAGE_SUFFIXES

if TYPE_CHECKING:
    from edgetl.backbones import Backbone

FASHION_MNIST_ALIASES = frozenset({"fashion-mnist", "fashion_mnist", "fmnist"})


def is_fashion_mnist(source: str) -> bool:
    return source.lower() in FASHION_MNIST_ALIASES


def source_name(source: str) -> str:
    """How a bundle names a source: ``fashion-mnist`` or the folder's own name (``photos/``), never the host's
    absolute path (it tells a device nothing and leaks the host's layout)."""
    if is_fashion_mnist(source):
        return source.lower()
    name = Path(source).name or Path(source).resolve().name
    return f"{name}/" if Path(source).is_dir() else name


def load_data(source: str, split: str = "train") -> ImageDataset:
    """``fashion-mnist`` (a split of it), an image folder with one subfolder per class, or a folder of
    train/ + val/ (+ test/) split folders (``split`` picks one; ``test`` falls back to val)."""
    if is_fashion_mnist(source):
        return load_fashion_mnist(split)
    if folder_layout(source) == "splits":
        splits = load_image_splits(source)
        wanted = [n for n in (split, "val" if split == "test" else split) if n in splits]
        return splits[wanted[0] if wanted else "train"]
    return load_image_folder(source)


def load_calibration(source: str) -> ImageDataset:
    """Like :func:`load_data`, but a folder of images without class subfolders is accepted (unlabelled)."""
    folder = Path(source)
    if folder.is_dir() and not any(p.is_dir() for p in folder.iterdir()):
        if any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
            return load_unlabelled_folder(folder)
    return load_data(source, "train")


def parse_classes(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,2,7-8"`` -> [0, 2, 7, 8]."""
    ids: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, _, hi = part.partition("-")
            ids.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ConfigError(f"--classes {text!r} is not a list of class ids like 0-4 or 0,2,7.") from None
    if len(set(ids)) != len(ids) or not ids:
        raise ConfigError(f"--classes {text!r} must name each class once, e.g. 0-4 or 0,2,7.")
    return ids


@dataclass(frozen=True)
class SplitRule:
    """How the fine-tuning splits are drawn from a source (``edgetl finetune``'s data flags)."""

    seed: int = 0
    test_fraction: float = 0.2  # a folder of class folders: held out for test
    classes: str | None = None  # e.g. "0-4" or "0,2,7": a subset of class ids
    k_shot: int | None = None  # exactly K training images per class
    train_per_class: int | None = None
    test_per_class: int | None = None


def load_splits(source: str, rule: SplitRule) -> tuple[ImageDataset, ImageDataset | None, ImageDataset | None]:
    """Train, val (a val/ split folder, else None: held out from train) and test sets after the class subset
    and K-shot / per-class sampling."""
    val: ImageDataset | None = None
    test: ImageDataset | None
    if is_fashion_mnist(source):
        train, test = load_data(source, "train"), load_data(source, "test")
    elif folder_layout(source) == "splits":  # train/ + val/ (+ test/): the user's own splits
        splits = load_image_splits(source)
        train, val, test = splits["train"], splits.get("val"), splits.get("test")
    else:
        if not 0 < rule.test_fraction < 1:
            raise ConfigError(f"--test-fraction must lie in (0, 1), got {rule.test_fraction}.")
        full = load_data(source)
        test, train = stratified_split(full, [rule.test_fraction, 1 - rule.test_fraction], seed=rule.seed)
    if rule.classes:
        ids = parse_classes(rule.classes)
        bad = [i for i in ids if not 0 <= i < len(train.classes)]
        if bad:
            raise ConfigError(f"--classes {bad} out of range; the data has classes 0..{len(train.classes) - 1}.")
        train = train.select_classes(ids)
        val, test = (None if d is None else d.select_classes(ids) for d in (val, test))
    if rule.k_shot is not None:
        train = k_shot(train, rule.k_shot, seed=rule.seed)[0]
    if rule.train_per_class is not None:
        train = balanced_subset(train, rule.train_per_class, seed=rule.seed)
    if rule.test_per_class is not None and test is not None:
        test = balanced_subset(test, rule.test_per_class, seed=rule.seed)
    return train, val, test


def data_record(source: str, classes: str | None) -> dict[str, object]:
    """What a run trained on, for ``edgetl export`` to calibrate on by default."""
    where = "fashion-mnist" if is_fashion_mnist(source) else str(Path(source).resolve())
    return {"source": where, "classes": parse_classes(classes) if classes else None}


def export_data(
    backbone: Backbone, data: ImageDataset | None, data_source: str | None, precisions: tuple[Precision, ...]
) -> tuple[ImageDataset | None, str]:
    """The images that calibrate and check the export, and how the manifest names them.

    Given data is used as is; else a fine-tuned run's recorded training data; else int8 is refused
    (calibrating a user's model on an unrelated dataset gives silently wrong ranges) and fp32 / fp16
    are checked on synthetic images (``None``).
    """
    if data is not None:
        return data, data_source or "caller's images"
    record = backbone.training_data
    if record and record.get("source"):
        return training_data(record), f"{source_name(str(record['source']))} (the fine-tune run's training data)"
    if Precision.INT8 in precisions:
        raise ConfigError(
            "int8 needs calibration images from the model's domain, and none were given. Fix: pass --calib DIR "
            "(a folder of your images; with one folder per class the accuracy guard also measures the drop), "
            "or --calib fashion-mnist; or export without int8 (--precision fp32,fp16). A run of `edgetl "
            "finetune` calibrates on its own training data by default."
        )
    return None, "synthetic check images (no calibration data: fp32/fp16 only)"


def training_data(record: dict[str, Any]) -> ImageDataset:
    """A fine-tune run's training data from its ``edgetl_config.json`` ``data`` record."""
    from edgetl.datasets import load_image_splits

    source = str(record["source"])
    if is_fashion_mnist(source):
        data = load_fashion_mnist("train")
    elif Path(source).is_dir():
        data = load_image_splits(source)["train"]
    else:
        raise DatasetError(
            f"The run was fine-tuned on {source}, which is not there any more. Fix: pass its images with --calib DIR."
        )
    classes = record.get("classes")
    return data.select_classes([int(c) for c in classes]) if classes else data


def synthetic_images(count: int = 32, size: int = 96, seed: int = 0) -> ImageDataset:
    """Smooth random colour fields (not noise: convolutions see edges and gradients) for parity checks."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (count, 6, 6, 3)).astype(np.float32)
    x = np.linspace(0, 5, size)
    i0 = np.floor(x).astype(int).clip(0, 4)
    f = (x - i0)[None, :, None, None]
    rows = coarse[:, i0] * (1 - f) + coarse[:, i0 + 1] * f  # (N, size, 6, 3)
    g = (x - i0)[None, None, :, None]
    fields = rows[:, :, i0] * (1 - g) + rows[:, :, i0 + 1] * g  # (N, size, size, 3)
    images = np.clip(fields + rng.normal(0, 8, fields.shape), 0, 255).astype(np.uint8)
    return ImageDataset(images, np.zeros(count, dtype=np.int64), ["synthetic"], labelled=False)
