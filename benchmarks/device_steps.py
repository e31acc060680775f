"""The device check's steps: each runs, prints and records ok / FAILED / SKIPPED without stopping the others,
and the environment (versions from metadata, GPU, providers) every result is read against."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

RESULTS: dict[str, Any] = {"steps": {}, "parity": {}, "latency": [], "build": {}}


class Skipped(Exception):
    """Raised inside a step that cannot apply here; recorded as SKIPPED with its reason, never a failure."""


class CheckFailed(RuntimeError):
    """A check ran and its result is wrong (e.g. golden mismatch): the step is FAILED without a traceback."""


def step(name: str, fn: Callable[[], Any], required: bool = True) -> Any:
    """Run one named step; print and record ok / FAILED / SKIPPED, never let it stop the others.

    A FAILED required step makes the verdict FAIL; an optional one (a comparison, not the TensorRT path) does not.
    """
    print(f"\n=== [device_check] {name}", flush=True)
    start = time.perf_counter()
    record: dict[str, Any] = {"required": required}
    try:
        value = fn()
    except Skipped as exc:
        record.update(status="SKIPPED", reason=str(exc))
        value = None
    except Exception as exc:  # report and continue: a device check should say everything it can
        if not isinstance(exc, CheckFailed):
            traceback.print_exc()
        record.update(status="FAILED", error=f"{type(exc).__name__}: {exc}")
        value = None
    else:
        record.update(status="ok")
    record["seconds"] = round(time.perf_counter() - start, 2)
    RESULTS["steps"][name] = record
    detail = record.get("reason") or record.get("error") or f"{record['seconds']:.1f} s"
    label = record["status"] if required or record["status"] != "FAILED" else "FAILED (optional)"
    print(f"=== [device_check] {label}: {name}: {detail}", flush=True)
    return value


def _version(*distributions: str) -> str:
    """Installed version of the first distribution found, read from metadata: nothing gets imported."""
    for dist in distributions:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def environment() -> dict[str, Any]:
    """Versions (torch and timm from metadata only: the device path must not import them), GPU, providers."""
    env: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable,
                           "platform": platform.platform(), "cpus": os.cpu_count()}  # fmt: skip
    env["numpy"] = np.__version__
    env["torch"], env["timm"], env["onnx"] = _version("torch"), _version("timm"), _version("onnx")
    env["cuda-python"] = _version("cuda-bindings", "cuda-python")
    for module in ("onnxruntime", "tensorrt"):
        try:
            env[module] = __import__(module).__version__
        except Exception as exc:
            env[module] = f"unavailable ({type(exc).__name__}: {exc})"
    try:
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except Exception:
        pass
    try:
        smi = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        env["nvidia_smi"] = subprocess.run(smi, check=False, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as exc:
        env["nvidia_smi"] = f"unavailable ({exc})"
    from edgetl_runtime.backends.tensorrt import device_info, gpu_available

    env["gpu_available"] = gpu_available()
    if env["gpu_available"] and importlib.util.find_spec("tensorrt") is not None:
        env.update(device_info())
    return env
