"""int8 (static, QDQ, accuracy-guarded) and fp16 versions of a features ONNX model, written atomically.

``images`` float32 (N, 3, H, W) -> ``features`` float32 (N, D) in, the same contract out. This module
is the public face; the pieces live in ``quantize_config`` (settings and presets), ``quantize_core``
(checks, preparation, ``quantize_static``), ``quantize_guard`` (task-level guard) and
``quantize_eval`` (cosine, few-shot probe, latency).

Typical use::

    report = quantize_guarded("backbone.fp32.onnx", "backbone.int8.onnx", calib, eval_x, eval_y,
                              config=QuantizeConfig.portable(), max_drop=1.0, source="fashion-mnist:train[:300]")
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_exporters.fp16 import Fp16Config
from edgetl_exporters.fp16 import convert_fp16 as fp16_convert
from edgetl_exporters.quantize_config import CalibrationMethod, QuantDType, QuantFormat, QuantizeConfig, cpu_has_vnni
from edgetl_exporters.quantize_core import (
    ArrayCalibrationReader,
    QuantizeReport,
    check_calibration,
    model_input_shape,
    prepare_fp32,
    publish,
    quantize_prepared,
    workdir,
)
from edgetl_exporters.quantize_guard import quantize_guarded

__all__ = [
    "ArrayCalibrationReader",
    "CalibrationMethod",
    "Fp16Config",
    "QuantDType",
    "QuantFormat",
    "QuantizeConfig",
    "QuantizeReport",
    "convert_fp16",
    "cpu_has_vnni",
    "fp16_for_bundle",
    "prepare_fp32",
    "quantize_for_bundle",
    "quantize_guarded",
    "quantize_int8",
]

FloatArray = npt.NDArray[np.float32]


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: FloatArray,
    config: QuantizeConfig | None = None,
    source: str = "unspecified",
) -> QuantizeReport:
    """Static int8 quantization of a features model, without accuracy guard (see ``quantize_guarded``).

    Args:
        fp32_path: fp32 ONNX, ``images`` (N, 3, H, W) -> ``features`` (N, D).
        out_path: where the int8 ONNX goes; written only on success.
        calibration: (N, 3, H, W) float32 images preprocessed like the eval data, disjoint from the test set.
        config: quantization settings; ``QuantizeConfig()`` when omitted.
        source: calibration provenance for the manifest (dataset, split, indices).
    """
    config = config or QuantizeConfig()
    _, shape = model_input_shape(fp32_path)
    calib = check_calibration(calibration, shape, config.num_calibration)
    with workdir(out_path) as tmp:
        prepared = prepare_fp32(fp32_path, tmp / "prepared.onnx", config.optimize_first)
        built, arguments = quantize_prepared(prepared, tmp / "int8.onnx", calib, config)
        publish(built, out_path)
    return QuantizeReport(
        config=config.to_dict(),
        calibration_count=len(calib),
        calibration_source=source,
        fp32_bytes=Path(fp32_path).stat().st_size,
        int8_bytes=Path(out_path).stat().st_size,
        excluded_nodes=list(config.nodes_to_exclude),
        ort_arguments=arguments,
    )


def convert_fp16(
    fp32_path: str | Path,
    out_path: str | Path,
    check_images: FloatArray | None = None,
    min_cosine: float | None = None,
    config: Fp16Config | None = None,
) -> dict[str, Any]:
    """fp16 weights and compute with float32 I/O; see :func:`edgetl_exporters.fp16.convert_fp16`.

    ``min_cosine`` overrides ``config.min_cosine`` (kept for callers of the older signature).
    """
    config = config or Fp16Config()
    if min_cosine is not None:
        config = dataclasses.replace(config, min_cosine=min_cosine)
    return fp16_convert(fp32_path, out_path, check_images, config)


def quantize_for_bundle(
    fp32_path: str | Path,
    calibration: FloatArray,
    eval_images: FloatArray,
    eval_labels: npt.NDArray[Any] | None,
    max_drop: float = 1.0,
    config: QuantizeConfig | None = None,
    source: str = "unspecified",
) -> tuple[bytes, dict[str, Any]]:
    """Guarded int8 bytes plus the report dict a bundle manifest stores (config under ``"config"``)."""
    fp32_path = Path(fp32_path)
    with workdir(fp32_path) as tmp:
        report = quantize_guarded(
            fp32_path,
            tmp / "int8.onnx",
            calibration,
            eval_images,
            eval_labels,
            config or QuantizeConfig.portable(),
            max_drop,
            source,
        )
        return (tmp / "int8.onnx").read_bytes(), report.to_dict()


def fp16_for_bundle(
    fp32_path: str | Path, check_images: FloatArray | None = None, config: Fp16Config | None = None
) -> tuple[bytes, dict[str, Any]]:
    """Checked fp16 bytes plus their report, for a bundle member."""
    fp32_path = Path(fp32_path)
    with workdir(fp32_path) as tmp:
        report = convert_fp16(fp32_path, tmp / "fp16.onnx", check_images, config=config)
        return (tmp / "fp16.onnx").read_bytes(), report
