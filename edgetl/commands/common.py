"""Argument helpers shared by the CLI commands."""

from __future__ import annotations

from pathlib import Path

from edgetl.datasets import IMAGE_SUFFIXES, ImageDataset, load_fashion_mnist, load_image_folder, load_unlabelled_folder


def load_data(source: str, split: str = "train") -> ImageDataset:
    """``fashion-mnist`` (a split of it) or an image folder with one subfolder per class."""
    if source.lower() in {"fashion-mnist", "fashion_mnist", "fmnist"}:
        return load_fashion_mnist(split)
    return load_image_folder(source)


def load_calibration(source: str) -> ImageDataset:
    """Like :func:`load_data`, but a folder of images without class subfolders is accepted (unlabelled)."""
    folder = Path(source)
    if folder.is_dir() and not any(p.is_dir() for p in folder.iterdir()):
        if any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
            return load_unlabelled_folder(folder)
    return load_data(source, "train")
