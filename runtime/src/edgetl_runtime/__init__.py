"""edgetl_runtime: the torch-free device side of edgetl.

``from edgetl_runtime import Learner, Bundle, create_backend`` is the whole device API; the names are
loaded on first use, so ``import edgetl_runtime`` itself stays light (no onnxruntime, no SQLite).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edgetl_runtime.errors import EdgeTLError
from edgetl_runtime.preprocess import PreprocessSpec

if TYPE_CHECKING:
    from edgetl_runtime.backends import create_backend
    from edgetl_runtime.bundle.reader import Bundle
    from edgetl_runtime.heads import create_head
    from edgetl_runtime.learner import Learner

__version__ = "0.1.0"
_LAZY = {
    "Bundle": "edgetl_runtime.bundle.reader",
    "Learner": "edgetl_runtime.learner",
    "create_backend": "edgetl_runtime.backends",
    "create_head": "edgetl_runtime.heads",
}
__all__ = ["Bundle", "EdgeTLError", "Learner", "PreprocessSpec", "__version__", "create_backend", "create_head"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgetl_runtime' has no attribute {name!r}")
