"""Inference backends: image batch ``(N, 3, H, W)`` float32 -> features ``(N, D)`` float32."""

from edgetl_runtime.backends.base import Backend, check_against_golden, create_backend

__all__ = ["Backend", "check_against_golden", "create_backend"]
