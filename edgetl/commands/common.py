"""Argument helpers shared by the CLI commands."""

from __future__ import annotations

from pathlib import Path

from edgetl.datasets import (
    IMAGE_SUFFIXES,
    ImageDataset,
    folder_layout,
    load_fashion_mnist,
    load_image_folder,
    load_image_splits,
    load_unlabelled_folder,
)

FASHION_MNIST_NAMES = {"fashion-mnist", "fashion_mnist", "fmnist"}


def is_fashion_mnist(source: str) -> bool:
    return source.lower() in FASHION_MNIST_NAMES


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
