"""Torch twins of the runtime's numpy preprocessing, for host training and evaluation.

Evaluation must match the device bit-for-bit in spirit (1e-4 in practice), so it uses the same
antialiased resize rule through ``F.interpolate(antialias=True)``. Training adds augmentation on top.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from edgetl_runtime.preprocess import PreprocessSpec, as_rgb_uint8


def to_tensor_uint8(image: np.ndarray) -> torch.Tensor:
    """HxW or HxWx3 uint8 -> ``(3, H, W)`` float32 tensor in 0..255."""
    return torch.from_numpy(np.array(as_rgb_uint8(image), copy=True)).permute(2, 0, 1).float()


def eval_transform(image: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """``(3, h, w)`` 0..255 float -> ``(3, H, W)`` normalised, exactly as the device preprocesses."""
    _, h, w = image.shape
    short = spec.resize_size
    new_h, new_w = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    mode = spec.interpolation.value
    resized = F.interpolate(image[None], size=(new_h, new_w), mode=mode, antialias=True, align_corners=False)[0]
    th, tw = spec.input_size
    top, left = int(round((new_h - th) / 2.0)), int(round((new_w - tw) / 2.0))
    cropped = resized[:, top : top + th, left : left + tw] / 255.0
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)
    return (cropped - mean) / std


def train_transform(
    image: torch.Tensor, spec: PreprocessSpec, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Light augmentation for few-shot fine-tuning: random resized crop (scale 0.7-1) and h-flip."""
    _, h, w = image.shape
    scale = float(torch.empty(1).uniform_(0.7, 1.0, generator=generator))
    ch, cw = max(1, int(round(h * scale**0.5))), max(1, int(round(w * scale**0.5)))
    top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
    crop = image[:, top : top + ch, left : left + cw]
    if bool(torch.rand(1, generator=generator) < 0.5):
        crop = crop.flip(-1)
    th, tw = spec.input_size
    mode = spec.interpolation.value
    out = F.interpolate(crop[None], size=(th, tw), mode=mode, antialias=True, align_corners=False)[0] / 255.0
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)
    return (out - mean) / std
