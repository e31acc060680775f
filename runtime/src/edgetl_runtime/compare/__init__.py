"""Compare bundles on the device that will run them, from the bundles alone (no torch): which backbone, input
size and precision gives the best few-shot accuracy on the user's own images within a latency budget.

``edgetl-device compare a.edgetl b.edgetl --data photos/ --budget-ms 15 -o cmp/`` or :func:`compare_bundles`.
"""

from edgetl_runtime.compare.config import CompareConfig
from edgetl_runtime.compare.run import Comparison, compare_bundles

__all__ = ["CompareConfig", "Comparison", "compare_bundles"]
