"""Which CPU families an int8 member is meant for, and why it may be slow or inexact elsewhere.

The exporter writes the families into ``manifest.quantization["targets"]``; bundles from before that
field are classified from how they were quantized. The facts behind each rule are measured by
``benchmarks/bench_int8_kernels.py`` (which prints the CPU it ran on).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgetl_runtime.cpu import CpuFamily, CpuInfo

TENSORRT = "tensorrt"  # a GPU target: TensorRT's explicit-quantization form
ALL_CPU_FAMILIES = (CpuFamily.X86_AVX2.value, CpuFamily.X86_VNNI.value, CpuFamily.ARM64.value)


def int8_targets(quantization: Mapping[str, Any]) -> tuple[str, ...]:
    """The families the int8 member was built for (recorded, or inferred from its quantization settings)."""
    recorded = quantization.get("targets")
    if isinstance(recorded, list) and recorded and all(isinstance(t, str) for t in recorded):
        return tuple(recorded)
    return infer_targets(quantization)


def infer_targets(quantization: Mapping[str, Any]) -> tuple[str, ...]:
    """Families for which these quantization settings are both exact and fast.

    - u8 activations, 7-bit weights (``reduce_range``): exact under every x86 kernel, and MLAS's
      u8 x s8 dot-product kernels serve it on ARM64: the portable form.
    - u8 activations, 8-bit weights: exact and fast with VNNI or on ARM64; on x86 without VNNI only
      the exact kernel is right, at about fp32 speed.
    - s8 activations (s8s8): ARM64's signed dot products; x86 does not fuse it (slower than fp32).
    - symmetric s8 with float biases and kept activations: TensorRT's form, slow on CPUs.
    """
    act = quantization.get("activation_type", "uint8")
    if act == "int8" and quantization.get("activation_symmetric") and not quantization.get("quantize_bias", True):
        return (TENSORRT,)
    if act == "int8":
        return (CpuFamily.ARM64.value,)
    if quantization.get("reduce_range", False):
        return ALL_CPU_FAMILIES
    return (CpuFamily.X86_VNNI.value, CpuFamily.ARM64.value)


def needs_exact_kernel(quantization: Mapping[str, Any], cpu: CpuInfo) -> bool:
    """Whether this CPU's fast int8 kernel is known to saturate on this member (x86 without VNNI, 8-bit weights)."""
    return cpu.family is CpuFamily.X86_AVX2 and not quantization.get("reduce_range", False)


def int8_mismatch(quantization: Mapping[str, Any], cpu: CpuInfo) -> str | None:
    """Why the int8 member is known to be slow or inexact on ``cpu``, or None when it was built for it."""
    targets = int8_targets(quantization)
    family = cpu.family.value
    if family in targets or cpu.family is CpuFamily.OTHER:
        return None
    reasons: dict[tuple[str, ...], str] = {
        (TENSORRT,): "it is in TensorRT's form (symmetric s8, float biases), which CPUs run slower than fp32",
        (CpuFamily.ARM64.value,): "its s8 activations (s8s8) are not fused by x86 kernels: slower than fp32",
    }
    why = reasons.get(targets)
    if why is None and cpu.family is CpuFamily.X86_AVX2:
        why = "its 8-bit weights saturate this CPU's fast int8 kernel (no VNNI); the exact kernel runs near fp32 speed"
    return (
        f"the bundle's int8 model was built for {list(targets)}, and this CPU is {family}: "
        f"{why or 'it is not meant for this CPU'}. `precision='best'` measures it against fp32 and keeps the faster "
        "correct one; re-export with `edgetl export ... --target portable` (or `--target "
        f"{family}`) for an int8 model meant for this device"
    )
