"""edgetl_exporters: ONNX export with parity validation, int8/fp16 quantization, bundle writing.

``from edgetl_exporters import export_features_onnx, quantize, write_bundle`` is the whole pipeline;
names are loaded on first use, so importing the package does not import onnx or onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgetl_exporters.bundle_writer import npz_bytes, write_bundle
    from edgetl_exporters.onnx_export import ExportConfig, ParityReport, export_features_onnx
    from edgetl_exporters.quantization import Fp16Config, QuantizeConfig, quantize

__version__ = "0.1.0"
_LAZY = {
    "ExportConfig": "edgetl_exporters.onnx_export",
    "ParityReport": "edgetl_exporters.onnx_export",
    "export_features_onnx": "edgetl_exporters.onnx_export",
    "Fp16Config": "edgetl_exporters.quantization",
    "QuantizeConfig": "edgetl_exporters.quantization",
    "quantize": "edgetl_exporters.quantization",
    "npz_bytes": "edgetl_exporters.bundle_writer",
    "write_bundle": "edgetl_exporters.bundle_writer",
}
__all__ = [
    "ExportConfig",
    "Fp16Config",
    "ParityReport",
    "QuantizeConfig",
    "__version__",
    "export_features_onnx",
    "npz_bytes",
    "quantize",
    "write_bundle",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgetl_exporters' has no attribute {name!r}")
