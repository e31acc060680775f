"""The one preprocessing spec shared by host and device, implemented in numpy.

The host trains with this spec (through a torch twin in ``edgetl.transforms``) and writes it into
the bundle manifest; the device replays it here. Resizing reproduces the separable, antialiased
filters of PIL and ``torch.nn.functional.interpolate(antialias=True)`` as small weight matrices, so
host and device agree to float precision rather than to "close enough".
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime.blas import single_threaded_blas
from edgetl_runtime.errors import ConfigError, InputError, raise_all

PREPROCESS_CHUNK = 32  # same-size images resampled in one product...
PREPROCESS_CHUNK_BYTES = 64 << 20  # ...as long as their float32 pixels stay within this (12 MP photos: one at a time)
MAX_INPUT_SIDE = 4096  # model input side; a larger one in a manifest is corruption or an allocation attack
# Bounds the product, not each factor: input 4096 and crop_pct 0.1 are each allowed, but together they
# resize every image to a 40960-pixel shorter side (20 GiB for one 40x40 image). 2**25 admits 4096 at 0.75.
MAX_RESIZE_PIXELS = 1 << 25
# Resampling builds dense (out, in) weight matrices: refuse an image whose extreme aspect ratio would make
# them huge (a 1x5000 strip resized to a 256 shorter side needs 82k x 5k weights, 3 GB).
MAX_RESAMPLE_WEIGHTS = 1 << 26  # a 6000x4000 photo for a 4096-pixel model needs 42M; a 1x5000 strip at 256 needs 400M


class Interpolation(str, Enum):
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes a model input.

    Resize so the shorter side is ``round(size / crop_pct)`` (timm's eval rule), centre-crop to
    ``size``, scale to [0, 1], then normalise with ``mean``/``std``. Output layout is NCHW RGB float32.
    """

    input_size: tuple[int, int] = (224, 224)
    crop_pct: float = 0.875
    interpolation: Interpolation = Interpolation.BILINEAR
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channel_order: str = "RGB"
    layout: str = "NCHW"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "interpolation", _to_interpolation(self.interpolation))
        try:
            object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
            object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
            object.__setattr__(self, "std", tuple(float(v) for v in self.std))
            if isinstance(self.crop_pct, (str, bytes, bool)):  # float() would accept "0.5" and True
                raise TypeError(f"crop_pct {self.crop_pct!r} is not a number")
            object.__setattr__(self, "crop_pct", float(self.crop_pct))
        except (TypeError, ValueError, OverflowError) as exc:  # e.g. "a" or inf where a number belongs
            raise ConfigError(
                f"PreprocessSpec needs numbers for input_size, crop_pct, mean and std, got {self.input_size!r}, "
                f"{self.crop_pct!r}, {self.mean!r}, {self.std!r} ({exc})."
            ) from None
        problems = []
        if len(self.input_size) != 2 or not 8 <= min(self.input_size) <= max(self.input_size) <= MAX_INPUT_SIDE:
            problems.append(f"input_size must be (height, width), each in [8, {MAX_INPUT_SIDE}], got {self.input_size}")
        if not all(math.isfinite(m) for m in self.mean):
            problems.append(f"mean values must be finite, got {self.mean}")
        if not 0.1 <= self.crop_pct <= 1.0:
            problems.append(f"crop_pct must lie in [0.1, 1.0], got {self.crop_pct}")
        elif not problems and self.resize_size**2 > MAX_RESIZE_PIXELS:
            problems.append(
                f"input_size {self.input_size} with crop_pct {self.crop_pct} resizes every image to a shorter side of "
                f"{self.resize_size} pixels ({self.resize_size**2} > {MAX_RESIZE_PIXELS} per channel, "
                f"{self.resize_size**2 * 12 / 2**30:.1f} GiB for a square image); raise crop_pct or lower input_size"
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            problems.append(f"mean and std need 3 values (RGB), got {self.mean} and {self.std}")
        if any(not math.isfinite(s) or s <= 0 for s in self.std):
            problems.append(f"std values must be positive and finite, got {self.std}")
        if self.channel_order != "RGB" or self.layout != "NCHW":
            problems.append(f"only RGB / NCHW is supported, got {self.channel_order} / {self.layout}")
        raise_all(ConfigError, problems, "Invalid PreprocessSpec")

    @property
    def resize_size(self) -> int:
        """Length of the shorter side after the resize, before the centre crop."""
        return int(math.floor(max(self.input_size) / self.crop_pct))

    def with_size(self, size: int) -> PreprocessSpec:
        """The same spec at another square resolution (handy for fast, low-res runs)."""
        return PreprocessSpec(
            input_size=(size, size),
            crop_pct=self.crop_pct,
            interpolation=self.interpolation,
            mean=self.mean,
            std=self.std,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        d["interpolation"] = self.interpolation.value
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        known = {"input_size", "crop_pct", "interpolation", "mean", "std", "channel_order", "layout"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"PreprocessSpec got unknown keys {unknown}; expected a subset of {sorted(known)}.")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"PreprocessSpec could not be built from {data!r}: {exc}") from exc


def _to_interpolation(value: Interpolation | str) -> Interpolation:
    try:
        return Interpolation(value)
    except ValueError:
        choices = [i.value for i in Interpolation]
        raise ConfigError(f"Unknown interpolation {value!r}; choose one of {choices}.") from None


# ---------------------------------------------------------------------------------------------
# Antialiased separable resampling (PIL's algorithm, also used by torch's antialias=True path).


def _triangle(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _cubic(x: npt.NDArray[np.float64], a: float = -0.5) -> npt.NDArray[np.float64]:
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


_FILTERS = {Interpolation.BILINEAR: (_triangle, 1.0), Interpolation.BICUBIC: (_cubic, 2.0)}


def resample_matrix(in_size: int, out_size: int, interpolation: Interpolation) -> npt.NDArray[np.float32]:
    """Weights ``(out_size, in_size)`` such that ``W @ signal`` resizes a 1-D signal with antialiasing."""
    kernel, support = _FILTERS[interpolation]
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = support * filter_scale
    centers = (np.arange(out_size) + 0.5) * scale  # (out,)
    lo = np.maximum((centers - support + 0.5).astype(np.int64), 0)
    hi = np.minimum((centers + support + 0.5).astype(np.int64), in_size)
    src = np.arange(in_size)
    w = kernel((src[None, :] - centers[:, None] + 0.5) / filter_scale)  # (out, in)
    w = np.where((src[None, :] >= lo[:, None]) & (src[None, :] < hi[:, None]), w, 0.0)
    w /= w.sum(axis=1, keepdims=True)
    return w.astype(np.float32)


@functools.lru_cache(maxsize=128)
def crop_weights(
    in_size: int, resized: int, start: int, length: int, interpolation: Interpolation
) -> npt.NDArray[np.float32]:
    """Rows ``start:start+length`` of the ``(resized, in_size)`` resampling matrix: resize and crop in one
    product, computing only the pixels the crop keeps. Cached: a camera or dataset repeats its sizes."""
    weights = np.ascontiguousarray(resample_matrix(in_size, resized, interpolation)[start : start + length])
    weights.setflags(write=False)
    return weights


def _geometry(h: int, w: int, spec: PreprocessSpec, index: int) -> tuple[int, int, int, int]:
    """Size after the shorter-side resize, and the centre crop's top/left offsets."""
    short = spec.resize_size
    if h <= w:
        new_h, new_w = short, int(short * w / h)
    else:
        new_h, new_w = int(short * h / w), short
    if max(new_h * h, new_w * w) > MAX_RESAMPLE_WEIGHTS:
        raise InputError(
            f"image {index} is {h}x{w}: its aspect ratio is too extreme to resize to a shorter side of {short} "
            f"(would give {new_h}x{new_w}). Fix: crop it closer to square first."
        )
    th, tw = spec.input_size
    if new_h < th or new_w < tw:
        raise InputError(f"Cannot centre-crop {new_h}x{new_w} to {th}x{tw}; the resize step should make it larger.")
    return new_h, new_w, int(round((new_h - th) / 2.0)), int(round((new_w - tw) / 2.0))


def resample(
    planes: npt.NDArray[np.float32],
    wh: npt.NDArray[np.float32],
    ww: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32] | None = None,
) -> Any:
    """``wh @ planes @ ww.T`` for ``(..., h, w)`` planes, contracting the cheaper side first."""
    h, w = planes.shape[-2:]
    th, tw = wh.shape[0], ww.shape[0]
    if th * w * (h + tw) <= h * tw * (w + th):
        return np.matmul(np.matmul(wh, planes), ww.T, out=out)
    return np.matmul(wh, np.matmul(planes, ww.T), out=out)


def _preprocess_same_size(
    images: list[npt.NDArray[np.uint8]], spec: PreprocessSpec, index: int, out: npt.NDArray[np.float32] | None = None
) -> npt.NDArray[np.float32]:
    """Images of one shape ``(h, w, C)``, C = 1 (gray) or 3 -> ``(n, 3, H, W)`` normalised model input.

    Resampling weights sum to 1 along each row, so normalising commutes with resizing:
    ``W ((x / 255 - mean) / std) W'^T == (W x W'^T) * (1 / (255 std)) - mean / std``. Normalisation
    is therefore done on whichever side is smaller: on the input for images smaller than the model's
    (the product then writes the final array in one pass), on the output for large photos (a gray
    plane is resampled once and broadcast over the three channels).
    """
    h, w, channels = images[0].shape
    new_h, new_w, top, left = _geometry(h, w, spec, index)
    th, tw = spec.input_size
    wh = crop_weights(h, new_h, top, th, spec.interpolation)  # (H, h)
    ww = crop_weights(w, new_w, left, tw, spec.interpolation)  # (W, w)
    std = np.asarray(spec.std, dtype=np.float32)
    scale = (1.0 / (255.0 * std)).astype(np.float32)[None, :, None, None]  # (1, 3, 1, 1)
    shift = (-np.asarray(spec.mean, dtype=np.float32) / std)[None, :, None, None]
    if out is None:
        out = np.empty((len(images), 3, th, tw), dtype=np.float32)
    stacked = np.stack(images).transpose(0, 3, 1, 2)  # (n, C, h, w) uint8
    if h * w * 3 <= th * tw:
        rgb = stacked[:, [0, 0, 0]] if channels == 1 else stacked  # (n, 3, h, w): small, so cheap
        normalised = rgb.astype(np.float32)
        normalised *= scale
        normalised += shift
        resample(normalised, wh, ww, out=out)
        return out
    planes = resample(stacked.astype(np.float32), wh, ww)  # (n, C, H, W)
    np.multiply(planes, scale, out=out)  # a gray plane broadcasts over the three channels
    out += shift
    return out


def as_rgb_uint8(image: npt.ArrayLike, index: int = 0) -> npt.NDArray[np.uint8]:
    """Validate one image (HxW grayscale, HxWx1 or HxWx3 RGB, uint8) and return it as HxWx3 uint8."""
    arr = _as_planes(image, index)
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr


def _as_planes(image: npt.ArrayLike, index: int = 0) -> npt.NDArray[np.uint8]:
    """Validate one image and return it as ``(H, W, 1)`` gray or ``(H, W, 3)`` RGB uint8 (alpha dropped)."""
    where = f"image {index}"
    try:
        arr = np.asarray(image)
    except (TypeError, ValueError) as exc:  # ragged nested lists
        raise InputError(f"{where} is not an array ({exc}); expected uint8 pixels HxW or HxWx3.") from None
    if arr.dtype != np.uint8:
        hint = "convert with (img * 255).round().astype(np.uint8)" if arr.dtype.kind == "f" else "cast to uint8"
        raise InputError(f"{where} has dtype {arr.dtype}; expected uint8 pixels in 0..255 ({hint}).")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise InputError(f"{where} has shape {arr.shape}; expected HxW (grayscale) or HxWx3 (RGB).")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"{where} is empty (shape {arr.shape}).")
    return arr[:, :, :3] if arr.shape[2] == 4 else arr


CHANNELS = (1, 3, 4)  # gray, RGB, RGBA: the channel counts an (H, W, C) image may have


def image_batch(images: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
    """Split an image *array* into images by one rule, refusing shapes it cannot tell apart.

    * ``(H, W)`` is one grayscale image; ``(H, W, C)`` with C in 1, 3, 4 is one image.
    * ``(N, H, W)`` with the last axis not 1, 3 or 4 is a batch of grayscale images, unless its first
      axis is 1, 3 or 4: that is also a channels-first ``(C, H, W)`` image, so it is refused.
    * ``(N, H, W, C)`` with C in 1, 3, 4 is a batch; channels-first ``(N, C, H, W)`` is refused.

    Anything ambiguous raises :class:`InputError` saying how to pass it (a list is never ambiguous).
    """
    shape = images.shape
    if images.ndim == 2 or (images.ndim == 3 and shape[2] in CHANNELS):
        return [images]
    if images.ndim == 3 and shape[0] in CHANNELS:
        raise InputError(
            f"An image array of shape {shape} is ambiguous: a channels-first ({shape[0]}, H, W) image or "
            f"{shape[0]} grayscale images. Fix: pass one image as (H, W, C) (img.transpose(1, 2, 0)), or "
            "several grayscale images as a list (list(arr))."
        )
    if images.ndim == 3:
        return list(images)
    if images.ndim == 4 and shape[3] in CHANNELS:
        return list(images)
    if images.ndim == 4 and shape[1] in CHANNELS:
        raise InputError(
            f"An image batch of shape {shape} is channels-first (N, C, H, W); edgetl takes (N, H, W, C). "
            "Fix: arr.transpose(0, 2, 3, 1)."
        )
    raise InputError(
        f"An image array must be one image (H, W) / (H, W, C) or a batch (N, H, W) / (N, H, W, C) with C in "
        f"{CHANNELS}, got shape {shape}. Fix: pass a list of images."
    )


def preprocess_batch(images: list[Any] | npt.NDArray[Any], spec: PreprocessSpec) -> npt.NDArray[np.float32]:
    """A batch of images of any size -> ``(N, 3, H, W)`` float32, validating each one.

    ``images`` is a list of images, or an array split by :func:`image_batch` (one image or a batch).
    """
    if isinstance(images, np.ndarray):
        images = image_batch(images)
    if not isinstance(images, (list, tuple)):
        raise InputError(f"Images must be a list of arrays or an array batch, got {type(images).__name__}.")
    if len(images) == 0:
        raise InputError("No images given; pass at least one image.")
    with single_threaded_blas():
        return _preprocess_list(images, spec)


def _preprocess_list(images: list[Any] | tuple[Any, ...], spec: PreprocessSpec) -> npt.NDArray[np.float32]:
    planes = [_as_planes(img, i) for i, img in enumerate(images)]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, arr in enumerate(planes):  # same-shape images are resampled together, in chunks
        groups.setdefault(arr.shape, []).append(i)
    out = np.empty((len(images), 3, *spec.input_size), dtype=np.float32)
    for members in groups.values():
        h, w, c = planes[members[0]].shape
        step = max(1, min(PREPROCESS_CHUNK, PREPROCESS_CHUNK_BYTES // (h * w * c * 4)))  # big photos: fewer at once
        for start in range(0, len(members), step):
            chunk = members[start : start + step]
            batch = [planes[i] for i in chunk]
            if chunk[-1] - chunk[0] == len(chunk) - 1:  # consecutive images: write into the output in place
                _preprocess_same_size(batch, spec, chunk[0], out[chunk[0] : chunk[-1] + 1])
            else:
                out[chunk] = _preprocess_same_size(batch, spec, chunk[0])
    return out


def preprocess_key(spec: PreprocessSpec) -> str:
    """Stable digest of a preprocessing spec; features made under another spec are not reused."""
    return hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
