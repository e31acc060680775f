"""Argument helpers shared by the CLI commands."""

from __future__ import annotations

from edgetl.datasets import ImageDataset, load_fashion_mnist, load_image_folder


def load_data(source: str, split: str = "train") -> ImageDataset:
    """``fashion-mnist`` (a split of it) or an image folder with one subfolder per class."""
    if source.lower() in {"fashion-mnist", "fashion_mnist", "fmnist"}:
        return load_fashion_mnist(split)
    return load_image_folder(source)
