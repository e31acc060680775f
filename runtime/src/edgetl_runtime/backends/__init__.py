"""Inference backends: image batch ``(N, 3, H, W)`` float32 -> features ``(N, D)`` float32."""

from edgetl_runtime.backends.base import Backend, check_against_golden
from edgetl_runtime.backends.selection import Selection, create_backend, select_backend

__all__ = ["Backend", "Selection", "check_against_golden", "create_backend", "select_backend"]
