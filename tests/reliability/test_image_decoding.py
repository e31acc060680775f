"""Image decoding: the resize a manifest may ask for is bounded, PostScript never reaches a decoder, 16-bit
images are scaled (not clipped) and enrol, and EXIF orientation is applied.

The pixel limit and batch-wise decoding of a folder are memory bounds (test_memory_bounds.py); the refusals of
hostile image files are cases of the corpus (test_bad_input_corpus.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgetl_runtime.bundle.manifest import Manifest
from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.errors import BundleError, InputError

from . import _hostile as H
from ._support import load_learner

pytestmark = pytest.mark.runtime


# ---------------------------------------------------------------------------------------------- preprocessing


def test_the_resize_product_is_bounded_not_each_factor(reliability_bundle: Path) -> None:
    manifest = Bundle.open(reliability_bundle).manifest
    doc = manifest.to_json()
    for size, crop, ok in ((4096, 0.875, True), (4096, 0.75, True), (4096, 0.7, False), (4096, 0.1, False)):
        edited = doc.replace('"crop_pct": 1.0', f'"crop_pct": {crop}').replace(
            "16,\n      16", f"{size},\n      {size}"
        )
        if ok:
            assert Manifest.from_json(edited).preprocess.resize_size ** 2 <= 1 << 25
        else:
            with pytest.raises(BundleError, match="resizes every image"):
                Manifest.from_json(edited)


# ---------------------------------------------------------------------------------------------- image files


def test_postscript_reaches_pillow_but_not_the_runtime(tmp_path: Path) -> None:
    """Control: Pillow identifies a PostScript file named .jpg as EPS (and would call Ghostscript to decode it)."""
    image = pytest.importorskip("PIL.Image")
    from edgetl_runtime.images import load_image

    path = tmp_path / "photo.jpg"
    path.write_bytes(H.EPS)
    with image.open(path) as im:
        assert im.format == "EPS"
    with pytest.raises(InputError, match="identified by its content"):
        load_image(path)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    image = pytest.importorskip("PIL.Image")
    from edgetl_runtime.images import load_image

    values = np.array([[0, 257, 32896, 65535]], np.uint16)  # 8-bit 0, 1, 128, 255
    for fmt in ("PNG", "TIFF"):
        path = tmp_path / f"g16.{fmt.lower()}"
        image.fromarray(values).save(path, format=fmt)
        with image.open(path) as im:
            assert im.mode.startswith("I")  # the 16-bit path is the one exercised
            assert np.asarray(im.convert("RGB"))[0, :, 0].tolist() == [0, 255, 255, 255]  # control: Pillow clips
        assert load_image(path)[0, :, 0].tolist() == [0, 1, 128, 255]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = pytest.importorskip("PIL.Image")
    from edgetl_runtime.images import load_image

    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white, as stored
    exif = image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    image.fromarray(pixels).save(path, exif=exif, quality=95)
    shown = load_image(path)
    assert shown.shape == (40, 20, 3)
    assert shown[:20].mean() > 200 and shown[20:].mean() < 50  # the white half is on top once displayed


def test_a_sixteen_bit_png_enrols(reliability_bundle: Path, tmp_path: Path) -> None:
    image = pytest.importorskip("PIL.Image")
    path = tmp_path / "g16.png"
    image.fromarray(np.full((20, 24), 40000, np.uint16)).save(path)
    with load_learner(reliability_bundle) as learner:
        assert learner.add([path], "gray") == [1]
