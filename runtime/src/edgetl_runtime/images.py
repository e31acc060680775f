"""Turn what a caller passes as images (arrays, batches, file paths) into validated uint8 RGB arrays."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from edgetl_runtime._optional import require
from edgetl_runtime.errors import InputError
from edgetl_runtime.preprocess import as_rgb_uint8, image_batch

ImageLike: TypeAlias = npt.NDArray[Any] | str | os.PathLike[str]
Images: TypeAlias = Sequence[ImageLike] | npt.NDArray[Any]


# File names a folder walk takes as images (the content still decides: see RASTER_FORMATS).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
RASTER_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")  # Pillow format names, identified by content
# The largest image decoded at full size: 6000 x 4000, any camera frame (72 MB of RGB). A 481 KB PNG of
# 13000 x 13000 is under Pillow's own bomb limit and took 3.7 GB to enrol (issue 24, item 10). A larger JPEG
# is decoded reduced (Pillow's draft: 1/2, 1/4 or 1/8 in the decoder, never at full size); other formats
# are refused with this limit in the message.
MAX_IMAGE_PIXELS = 24_000_000
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def load_image(path: str | os.PathLike[str], *, min_side: int | None = None) -> npt.NDArray[np.uint8]:
    """Read an image file as HxWx3 uint8 RGB, upright (Pillow, imported only when files are used).

    The format is identified by content, not name, and must be a raster format in
    :data:`RASTER_FORMATS`: Pillow would hand a PostScript file named ``.jpg`` to Ghostscript. EXIF
    orientation is applied, so a phone photo is seen as it is displayed; 16-bit images are scaled to
    8 bits (``round(v * 255 / 65535)``), not clipped at 255.

    ``min_side``: return the picture :func:`shrink`-ed to that shorter side (a host holding many photos
    keeps what the model needs, not 12 megapixels each); None keeps the full decode, which is what a
    device enrols and hashes (:func:`image_digest`).
    """
    full = _load_full(path)
    return full if min_side is None else shrink(full, min_side)


def _load_full(path: str | os.PathLike[str]) -> npt.NDArray[np.uint8]:
    image_module = require("PIL.Image", "Reading image files")
    image_ops = require("PIL.ImageOps", "Reading image files")
    p = Path(path)
    if not p.is_file():
        raise InputError(f"Image file {p} does not exist.")
    try:
        with image_module.open(p, formats=RASTER_FORMATS) as im:
            _fit_pixel_limit(im, p)
            return _rgb8(image_ops.exif_transpose(im), p)
    except image_module.UnidentifiedImageError:
        raise InputError(
            f"{p} is not a {', '.join(RASTER_FORMATS)} image (identified by its content, not its name). "
            "Fix: convert it to one of those formats."
        ) from None
    except InputError:
        raise
    except Exception as exc:  # PIL raises OSError, DecompressionBombError, SyntaxError, ValueError ...
        raise InputError(f"{p} is not a readable image ({type(exc).__name__}: {exc}).") from None


def _fit_pixel_limit(im: Any, path: Path) -> None:
    """Decode a JPEG over :data:`MAX_IMAGE_PIXELS` reduced in its decoder; refuse any other such image."""
    width, height = im.size
    if width * height <= MAX_IMAGE_PIXELS:
        return
    if im.format == "JPEG":
        for scale in (2, 4, 8):
            if (width // scale) * (height // scale) <= MAX_IMAGE_PIXELS:
                im.draft("RGB", (-(-width // scale), -(-height // scale)))
                break
    if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:
        raise InputError(
            f"{path} is {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS:,} edgetl decodes (6000x4000; a "
            "larger JPEG is decoded reduced). Fix: downscale it (the model sees a few hundred pixels a side anyway)."
        )


def _rgb8(im: Any, path: Path) -> npt.NDArray[np.uint8]:
    """A decoded Pillow image -> (H, W, 3) uint8, scaling 16-bit samples instead of clipping them."""
    if im.mode in _SIXTEEN_BIT:  # 16-bit grayscale (PNG, TIFF); "I" holds the same 0..65535 range
        wide = np.clip(np.asarray(im).astype(np.int64), 0, 65535)  # (H, W)
        gray = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)  # (H, W, 3)
    if im.mode == "F":
        raise InputError(
            f"{path} holds 32-bit float pixels, which have no defined range. Fix: save it as an 8- or 16-bit image."
        )
    return np.asarray(im.convert("RGB"), dtype=np.uint8)  # (H, W, 3)


def as_image_list(images: Images) -> list[npt.NDArray[np.uint8]]:
    """Validate images: a path, a list of images/paths, or an array split by :func:`image_batch`.

    One ``(H, W, 3)`` array is one image (never H images of W pixels); see ``image_batch`` for the rule.
    """
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if isinstance(images, np.ndarray):
        images = image_batch(images)
    elif not isinstance(images, Sequence):
        raise InputError(
            f"Images must be a list of arrays or file paths, or an array batch; got {type(images).__name__}."
        )
    if len(images) == 0:
        raise InputError("No images given; pass at least one image.")
    out = []
    for i, image in enumerate(images):
        if isinstance(image, (str, os.PathLike)):
            out.append(load_image(image))
        else:
            try:
                arr = np.asarray(image)
            except (TypeError, ValueError) as exc:  # ragged nested lists
                raise InputError(f"image {i} is not an array ({exc}); expected uint8 pixels HxW or HxWx3.") from None
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise InputError(f"image {i} contains NaN or Inf; expected uint8 pixels in 0..255.")
            out.append(as_rgb_uint8(arr, i))
    return out


def shrink(image: npt.NDArray[np.uint8], min_side: int) -> npt.NDArray[np.uint8]:
    """``image`` box-averaged by the largest integer factor that keeps its shorter side >= ``min_side``.

    Pillow's ``reduce`` over the exact decoded pixels, not JPEG ``draft`` (DCT scaling): the result is a
    deterministic function of the pixels a device decodes, so the host can also hash those pixels first
    and its features stay within resampling noise of the device's (antialiased resize of either).
    """
    if min_side < 1:
        raise InputError(f"min_side must be >= 1, got {min_side}.")
    factor = min(image.shape[:2]) // min_side
    if factor < 2:
        return image
    image_module = require("PIL.Image", "Shrinking images")
    with image_module.fromarray(np.ascontiguousarray(image)) as im:
        return np.asarray(im.reduce(factor), dtype=np.uint8)  # (H // f, W // f, 3)


def image_digest(image: npt.NDArray[np.uint8]) -> str:
    """SHA-256 of an image's pixels and shape: the same picture gets the same key, whatever its file."""
    h = hashlib.sha256(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def hflip(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    return np.ascontiguousarray(image[:, ::-1])
