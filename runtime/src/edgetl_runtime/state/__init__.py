"""The device's enrolment state: one SQLite file of samples, their kept images and features per model.

Crash-safe by construction (WAL, one transaction per change) and inspectable with any SQLite tool; the
head is derived from it. :class:`FeatureStore` is the face; the rest are its parts.
"""

from edgetl_runtime.state.image_policy import ImageKeeping, KeepMode
from edgetl_runtime.state.store import FeatureStore

__all__ = ["FeatureStore", "ImageKeeping", "KeepMode"]
