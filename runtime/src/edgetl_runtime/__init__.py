"""edgetl_runtime: the torch-free device side of edgetl."""

from edgetl_runtime.errors import EdgeTLError
from edgetl_runtime.preprocess import PreprocessSpec

__version__ = "0.1.0"
__all__ = ["EdgeTLError", "PreprocessSpec", "__version__"]
