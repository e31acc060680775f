"""Build TensorRT engines for a bundle on this host's GPU, for tests and benchmarks.

Engines are never shipped: they are tied to one GPU and one TensorRT version (DESIGN §5), so the
device builds its own. This module only reuses the runtime's builder and cache, so the host builds
exactly what a device with the same GPU would.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable
from typing import Any

from edgetl_runtime.backends.base import check_against_golden
from edgetl_runtime.backends.tensorrt import EngineBuildConfig, TensorRTBackend, device_info, engine_cache_path
from edgetl_runtime.bundle import Bundle
from edgetl_runtime.errors import ConfigError
from edgetl_runtime.manifest import Precision


def prebuild_engines(bundle_path: str | os.PathLike[str], precisions: Iterable[str | Precision] = ("fp16", "int8"),
                     config: EngineBuildConfig | None = None, verify: bool = True) -> dict[str, Any]:  # fmt: skip
    """Build (or find cached) engines for ``precisions`` and, with ``verify``, check them against golden.npz.

    Returns ``{"device": {...}, "engines": {precision: {"path", "bytes", "cached", "seconds", "golden"}}}``.
    """
    bundle = Bundle.open(bundle_path)
    base = config or EngineBuildConfig()
    engines: dict[str, Any] = {}
    for value in precisions:
        try:
            precision = Precision(value)
        except ValueError:
            raise ConfigError(f"Unknown precision {value!r}; choose fp32, fp16 or int8.") from None
        path = engine_cache_path(bundle, precision, dataclasses.replace(base, precision=precision))
        cached = path.is_file()
        start = time.perf_counter()
        with TensorRTBackend.from_bundle(bundle, precision, base) as backend:
            seconds = time.perf_counter() - start
            golden = check_against_golden(backend, bundle).to_dict() if verify else None
        engines[precision.value] = {"path": str(path), "bytes": path.stat().st_size, "cached": cached,
                                    "seconds": round(seconds, 3), "golden": golden}  # fmt: skip
    return {"device": device_info(), "engines": engines}
