"""What a TensorRT engine is built from and cached under: the build settings, their cache key, the input
profile. Pure data (no TensorRT import): the backend (:mod:`edgetl_runtime.backends.tensorrt`) builds with it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetl_runtime.arguments import to_enum
from edgetl_runtime.bundle.manifest import Precision
from edgetl_runtime.errors import BackendError, ConfigError, raise_all

DEFAULT_ENGINE_DIR = Path.home() / ".cache" / "edgetl" / "engines"
# TensorRT 10 builder flags per precision. int8 adds FP16 so the layers the Q/DQ ONNX leaves in
# float run in half precision rather than fp32. TensorRT >= 11 removed these flags: there every
# network is strongly typed and precision comes from the ONNX itself.
_PRECISION_FLAGS: dict[Precision, tuple[str, ...]] = {
    Precision.FP32: (),
    Precision.FP16: ("FP16",),
    Precision.INT8: ("INT8", "FP16"),
}
# Settings that change the engine TensorRT builds; the cache paths do not.
_ENGINE_FIELDS = ("precision", "min_batch", "opt_batch", "max_batch", "workspace_bytes", "builder_optimization_level")


@dataclass(frozen=True)
class EngineBuildConfig:
    """How to build an engine: precision, the dynamic-batch profile, the builder's budget, the caches.

    ``timing_cache`` (``None`` disables it) holds TensorRT's per-layer tactic timings and makes
    rebuilds fast; ``engine_dir`` holds the built engines.
    """

    precision: Precision = Precision.FP16
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    workspace_bytes: int = 1 << 30
    timing_cache: Path | None = DEFAULT_ENGINE_DIR / "timing.cache"
    engine_dir: Path = DEFAULT_ENGINE_DIR
    builder_optimization_level: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", to_enum(Precision, self.precision, "precision"))
        object.__setattr__(self, "engine_dir", Path(self.engine_dir).expanduser())
        if self.timing_cache is not None:
            object.__setattr__(self, "timing_cache", Path(self.timing_cache).expanduser())
        problems = []
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            problems.append(
                f"batch sizes must satisfy 1 <= min_batch <= opt_batch <= max_batch, got "
                f"{self.min_batch}, {self.opt_batch}, {self.max_batch}"
            )
        if self.workspace_bytes < 1 << 20:
            problems.append(f"workspace_bytes must be at least 1 MiB, got {self.workspace_bytes}")
        if not 0 <= self.builder_optimization_level <= 5:
            level = self.builder_optimization_level
            problems.append(f"builder_optimization_level must lie in 0..5 (TensorRT's default is 3), got {level}")
        raise_all(ConfigError, problems, "Invalid EngineBuildConfig")

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["precision"] = self.precision.value
        return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}


def engine_cache_key(onnx_sha256: str, trt_version: str, gpu_name: str, compute_capability: str,
                     config: EngineBuildConfig, input_shape: tuple[int, ...] = ()) -> str:  # fmt: skip
    """SHA-256 naming the one engine these inputs produce; any change in them means another engine."""
    settings = config.to_dict()
    parts = {
        "onnx_sha256": onnx_sha256,
        "tensorrt": trt_version,
        "gpu_name": gpu_name,
        "compute_capability": str(compute_capability),
        "input_shape": [int(d) for d in input_shape],
        "config": {k: settings[k] for k in _ENGINE_FIELDS},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def precision_flags(precision: Precision) -> tuple[str, ...]:
    """TensorRT 10 builder flags for ``precision``."""
    return _PRECISION_FLAGS[precision]


def profile_shapes(shape: tuple[int, ...], config: EngineBuildConfig, image_size: tuple[int, int] | None = None,
                   ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:  # fmt: skip
    """(min, opt, max) input shapes for an ONNX input shape such as ``(-1, 3, 224, 224)``."""
    if len(shape) != 4:
        raise BackendError(f"The backbone input must be (N, 3, H, W), got a {len(shape)}-d input {shape}.")
    dims = list(shape)
    dims[1] = 3 if dims[1] < 0 else dims[1]
    for axis, size in zip((2, 3), image_size or (-1, -1), strict=True):
        dims[axis] = size if dims[axis] < 0 else dims[axis]
    if min(dims[1:]) < 1:
        raise BackendError(f"The ONNX input {shape} has a dynamic height/width; pass image_size to fix it.")
    sample = (dims[1], dims[2], dims[3])
    if dims[0] >= 1:  # a static batch: one shape
        return (dims[0], *sample), (dims[0], *sample), (dims[0], *sample)
    return (config.min_batch, *sample), (config.opt_batch, *sample), (config.max_batch, *sample)
