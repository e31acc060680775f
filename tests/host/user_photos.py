"""A user's own photos for tests: real pictures (skimage's sample photos), cropped, saved as PNG and JPEG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")  # skimage.data RGB photos: one class each


def photo_crops(name: str, n: int, seed: int) -> list[np.ndarray]:
    """``n`` random crops (mixed sizes, some flipped) of one real photo."""
    import skimage.data

    img = getattr(skimage.data, name)()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = int(rng.integers(60, 140)), int(rng.integers(60, 140))
        top, left = int(rng.integers(0, img.shape[0] - h)), int(rng.integers(0, img.shape[1] - w))
        crop = img[top : top + h, left : left + w]
        out.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return out


def write_class_folders(root: Path, n: int = 6, classes: tuple[str, ...] = PHOTOS[:2], seed: int = 0) -> Path:
    """root/<class>/<i>.png|jpg from crops of one photo per class."""
    from PIL import Image

    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, crop in enumerate(photo_crops(name, n, seed + 17 * c)):
            Image.fromarray(crop).save(folder / (f"{i}.jpg" if i % 2 else f"{i}.png"))
    return root
