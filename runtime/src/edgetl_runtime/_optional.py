"""Probe optional dependencies without importing them, and fail with the extra to install."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from edgetl_runtime.errors import OptionalDependencyError

# module name -> (distribution to install, why it is needed)
_HINTS: dict[str, str] = {
    "onnxruntime": "pip install 'edgetl-runtime[cpu]' (or [gpu], or the Jetson onnxruntime wheel)",
    "tensorrt": "pip install 'edgetl-runtime[tensorrt]' on a machine with an NVIDIA GPU",
    "PIL": "pip install 'edgetl-runtime[images]' (Pillow) to read image files",
    "torch": "pip install edgetl (the host package) — torch is never needed on the device",
    "onnx": "pip install edgetl-exporters",
    "cuda": "pip install cuda-python (needed by the TensorRT runner for device buffers)",
}


def is_available(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise an :class:`OptionalDependencyError` naming the install command."""
    if not is_available(module):
        hint = _HINTS.get(module.split(".", maxsplit=1)[0], f"pip install {module}")
        raise OptionalDependencyError(f"{purpose} needs the '{module}' module, which is not installed. Fix: {hint}.")
    return importlib.import_module(module)
