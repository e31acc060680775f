"""What an enrolment state keeps of each enrolled image, so another precision or a new bundle can re-extract it.

Features belong to one model: the int8 and fp32 members of a bundle, or a re-exported bundle, give other
features for the same picture. A state that kept only features would be tied to one model; one that keeps
the pixels (or a thumbnail) computes any model's features on demand. Pixels are stored lossless, without
Pillow: each row minus the row above (PNG's "Up" filter) then zlib, which compresses a photo about as
well as PNG does (figures in docs/state.md, from benchmarks/bench_state_storage.py).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from enum import Enum

import numpy as np
import numpy.typing as npt

from edgetl_runtime.errors import InputError, StateError
from edgetl_runtime.images import MAX_IMAGE_PIXELS
from edgetl_runtime.preprocess import Interpolation, resample, resample_matrix

# Shorter side, px. Re-extracting a 224-px model's 11520-d features from thumbnails of 60-90 % camera frames
# (benchmarks/bench_state_storage.py): cosine to the original's features min 0.9988 / mean 0.9997 at 384 px,
# but 0.976 / 0.993 at 256 and 224 px (the grid pooling sees the second resampling); 384 costs ~2x the bytes.
DEFAULT_THUMBNAIL = 384
MIN_THUMBNAIL = 16
# zlib level 1, not 6: a few % more bytes for a fraction of the encoding time, on the device's interactive
# enrolment path (docs/state.md has the figures of benchmarks/bench_state_storage.py).
_ZLIB_LEVEL = 1


class KeepMode(str, Enum):
    THUMBNAIL = "thumbnail"  # shorter side at most ``size`` px (smaller images are kept as they are)
    ORIGINAL = "original"  # every pixel as enrolled
    NONE = "none"  # features only: no pixels leave the enrolment call (privacy)


@dataclass(frozen=True)
class ImageKeeping:
    """How much of each enrolled image the state keeps.

    Args:
        mode: ``thumbnail`` (default), ``original`` or ``none`` (features only: the state then serves only
            the models it has features from, and a new bundle cannot re-extract these samples).
        size: with ``thumbnail``, the shorter side in pixels. Re-extracting from a thumbnail gives features
            close to the original's when ``size`` is at least the model's resize size (a 224-px model
            resizes to 224-256); a larger model input upscales the thumbnail, and the learner warns.
    """

    mode: KeepMode = KeepMode.THUMBNAIL
    size: int = DEFAULT_THUMBNAIL

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mode", KeepMode(self.mode))
        except ValueError:
            raise InputError(
                f"keep_images mode {self.mode!r} is unknown. Fix: use one of "
                f"{[m.value for m in KeepMode]}, or a thumbnail size in pixels."
            ) from None
        if type(self.size) is not int or self.size < MIN_THUMBNAIL:
            raise InputError(f"Thumbnail size must be an int >= {MIN_THUMBNAIL} pixels, got {self.size!r}.")

    @classmethod
    def parse(cls, value: ImageKeeping | str | int) -> ImageKeeping:
        """``"thumbnail"``, ``"original"``, ``"none"``, or a thumbnail size (``256`` or ``"256"``)."""
        if isinstance(value, ImageKeeping):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(KeepMode.THUMBNAIL, value)
        if isinstance(value, str):
            text = value.strip().lower()
            if text.isdigit():
                return cls(KeepMode.THUMBNAIL, int(text))
            if text in _MODES:
                return cls(KeepMode(text))
        raise InputError(f"keep_images must be 'thumbnail', 'original', 'none' or a size in pixels, got {value!r}.")

    def to_text(self) -> str:
        """The state's meta value: ``thumbnail:256``, ``original`` or ``none``."""
        return f"thumbnail:{self.size}" if self.mode is KeepMode.THUMBNAIL else self.mode.value

    @classmethod
    def from_text(cls, text: str) -> ImageKeeping:
        mode, _, size = text.partition(":")
        if mode == KeepMode.THUMBNAIL.value and size.isdigit():
            return cls(KeepMode.THUMBNAIL, int(size))
        if mode in (KeepMode.ORIGINAL.value, KeepMode.NONE.value) and not size:
            return cls(KeepMode(mode))
        raise StateError(f"its image policy {text!r} is damaged (expected 'thumbnail:N', 'original' or 'none').")

    def shrink(self, image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8] | None:
        """The pixels this policy keeps of an ``(H, W, 3)`` image, or None for ``none``."""
        if self.mode is KeepMode.NONE:
            return None
        h, w = image.shape[:2]
        if self.mode is KeepMode.ORIGINAL and h * w > MAX_IMAGE_PIXELS:  # what load_image would decode at most
            scale = (MAX_IMAGE_PIXELS / (h * w)) ** 0.5
            return thumbnail(image, max(1, int(h * scale)), max(1, int(w * scale)))
        if self.mode is KeepMode.ORIGINAL or min(h, w) <= self.size:
            return image
        scale = self.size / min(h, w)
        return thumbnail(image, max(1, round(h * scale)), max(1, round(w * scale)))


_MODES = {m.value for m in KeepMode}


def thumbnail(image: npt.NDArray[np.uint8], height: int, width: int) -> npt.NDArray[np.uint8]:
    """Antialiased bicubic downscale of ``(H, W, 3)`` uint8 pixels, with the preprocessing's own filters.

    Bicubic, not bilinear: a second resampling (the model's) after a bilinear thumbnail blurs twice, which
    measured cosine 0.9924 instead of 0.9988 (min over 16 frames, 384 px).
    """
    wh = resample_matrix(image.shape[0], height, Interpolation.BICUBIC)  # (h, H)
    ww = resample_matrix(image.shape[1], width, Interpolation.BICUBIC)  # (w, W)
    planes = np.moveaxis(image, 2, 0).astype(np.float32)  # (3, H, W)
    small = resample(planes, wh, ww)  # (3, h, w), the cheaper contraction first
    return np.ascontiguousarray(np.moveaxis(np.clip(np.rint(small), 0, 255).astype(np.uint8), 0, 2))  # (h, w, 3)


_TAG = b"edgetl-kept1"  # after the zlib stream: this tag and a digest binding the pixels to their image hash
_DIGEST_BYTES = 16


def pixels_digest(key: str, raw: bytes, height: int, width: int) -> bytes:
    """What binds kept pixels to their row: the image hash (the key), the size and the encoded bytes."""
    h = hashlib.sha256(b"edgetl kept pixels\0" + key.encode("ascii", "replace") + f"\0{height}x{width}\0".encode())
    h.update(raw)
    return h.digest()[:_DIGEST_BYTES]


def encode_pixels(image: npt.NDArray[np.uint8], key: str | None = None) -> bytes:
    """Lossless ``(H, W, 3)`` uint8 -> bytes: PNG's "Up" filter (row minus the row above, mod 256), then zlib;
    with ``key`` (the image hash of the row it is written to), a digest binding the pixels to that row."""
    rows = np.ascontiguousarray(image, dtype=np.uint8)
    delta = rows.copy()
    delta[1:] -= rows[:-1]  # uint8 arithmetic wraps mod 256, which decode's cumulative sum undoes exactly
    raw = delta.tobytes()
    blob = zlib.compress(raw, _ZLIB_LEVEL)
    return blob if key is None else blob + _TAG + pixels_digest(key, raw, *rows.shape[:2])


def decode_pixels(
    blob: object, height: object, width: object, where: str, key: str | None = None
) -> npt.NDArray[np.uint8]:
    """Inverse of :func:`encode_pixels`; a damaged blob or size (as read from a state row) is a
    :class:`StateError`, never a wrong image. With ``key``, pixels that carry a digest must match their row
    (swapped rows, swapped height and width: issue 24, item 7); pixels kept before the digest existed carry
    none and read as before."""
    if not (type(height) is int and type(width) is int and height > 0 and width > 0 and isinstance(blob, bytes)):
        raise StateError(
            f"The kept pixels of {where} are damaged (size {height!r}x{width!r}, {type(blob).__name__} data). Fix: "
            "remove the sample and enrol the image again, or restore the state from a backup."
        )
    if height * width > MAX_IMAGE_PIXELS:  # no policy keeps more: a row declaring 12000x12000 is damage
        raise StateError(
            f"The kept pixels of {where} are damaged: {height}x{width} is more than the {MAX_IMAGE_PIXELS:,} pixels "
            "a state keeps. Fix: remove the sample and enrol the image again, or restore the state from a backup."
        )
    expected = height * width * 3
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(blob, expected + 1)  # bounded: a damaged blob cannot inflate without limit
        trailer = inflater.unused_data
        tagged = len(trailer) == len(_TAG) + _DIGEST_BYTES and trailer.startswith(_TAG)
        ok = len(raw) == expected and inflater.eof and (not trailer or tagged)
    except zlib.error:
        ok = tagged = False
    if ok and key is not None and tagged:
        ok = trailer[len(_TAG) :] == pixels_digest(key, raw, height, width)
    if not ok:
        raise StateError(
            f"The kept pixels of {where} are damaged (expected {height}x{width}x3 bytes that match their image "
            "hash). Fix: remove the sample and enrol the image again, or restore the state from a backup."
        )
    delta = np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
    return np.cumsum(delta, axis=0, dtype=np.uint8)  # (H, W, 3): undoes the Up filter, mod 256
