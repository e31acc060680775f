"""int8 and fp16 versions of a features ONNX model, checked against fp32 and written atomically.

One entry, :func:`quantize`; ``images`` float32 (N, 3, H, W) -> ``features`` float32 (N, D) in, the
same contract out. The rooms behind it: ``config`` (every int8 argument, pinned; presets), ``core``
(checks, graph preparation, ``quantize_static``, plain int8), ``guard`` (the task-level accuracy
guard that keeps damaging nodes in float), ``judge`` (its paired statistics), ``fp16`` and ``measure``
(running and timing a features model).

Typical use::

    report = quantize("backbone.fp32.onnx", "backbone.int8.onnx", "int8", calib, eval_images=held_out,
                      eval_labels=labels, config=QuantizeConfig.portable(), source="fashion-mnist:train[:300]")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_exporters.quantization.config import PRESETS, CalibrationMethod, QuantDType, QuantFormat, QuantizeConfig
from edgetl_exporters.quantization.core import QuantizeReport, quantize_int8
from edgetl_exporters.quantization.fp16 import Fp16Config, convert_fp16
from edgetl_exporters.quantization.guard import quantize_guarded
from edgetl_runtime.arguments import to_enum
from edgetl_runtime.bundle.manifest import Precision
from edgetl_runtime.errors import ConfigError

__all__ = [
    "PRESETS",
    "CalibrationMethod",
    "Fp16Config",
    "QuantDType",
    "QuantFormat",
    "QuantizeConfig",
    "QuantizeReport",
    "quantize",
]

FloatArray = npt.NDArray[np.float32]


def quantize(
    fp32_path: str | Path,
    out_path: str | Path,
    precision: Precision | str,
    images: FloatArray | None,
    *,
    eval_images: FloatArray | None = None,
    eval_labels: npt.NDArray[Any] | None = None,
    config: QuantizeConfig | Fp16Config | None = None,
    max_drop: float = 1.0,
    source: str = "unspecified",
) -> dict[str, Any]:
    """Write the int8 or fp16 version of the fp32 features model to ``out_path`` and return its report.

    Args:
        fp32_path: fp32 ONNX, ``images`` (N, 3, H, W) -> ``features`` (N, D).
        out_path: written only when every check passed; else a :class:`QuantizationError`.
        precision: ``int8`` or ``fp16``.
        images: int8: the calibration images (disjoint from any test set); fp16: the check images its
            features must match fp32 on (``None``: converted unchecked).
        eval_images / eval_labels: int8 only, held-out images for the accuracy guard
            (:func:`guard.quantize_guarded`): labelled, the paired few-shot drop must stay within
            ``max_drop`` points; ``eval_labels=None``, feature agreement with fp32 is judged. Without
            ``eval_images`` the model is quantized exactly as ``config`` says (:func:`core.quantize_int8`).
        config: a :class:`QuantizeConfig` for int8 (default ``portable``), an :class:`Fp16Config` for fp16.
        source: calibration provenance for the manifest.

    Returns:
        The report a bundle manifest stores: sizes, the exact converter arguments, the checks and their figures.
    """
    precision = to_enum(Precision, precision, "precision")
    if precision is Precision.FP16:
        if not (config is None or isinstance(config, Fp16Config)):
            raise ConfigError(f"fp16 takes an Fp16Config, got {type(config).__name__}.")
        return convert_fp16(fp32_path, out_path, images, config)
    if precision is not Precision.INT8 or not (config is None or isinstance(config, QuantizeConfig)):
        raise ConfigError(f"quantize makes int8 (with a QuantizeConfig) or fp16, not {precision.value}.")
    if images is None:
        raise ConfigError("int8 needs calibration images from the model's domain; pass them as `images`.")
    config = config or QuantizeConfig.portable()
    if eval_images is None:
        return quantize_int8(fp32_path, out_path, images, config, source).to_dict()
    guarded = quantize_guarded(fp32_path, out_path, images, eval_images, eval_labels, config, max_drop, source)
    return guarded.to_dict()
