"""Which CPU families (or TensorRT) an int8 member is meant for, and why it may be slow, inexact or unbuildable
elsewhere.

The exporter writes the families into ``manifest.quantization["targets"]``; bundles from before that
field are classified from how they were quantized. The facts behind each rule are measured by
``benchmarks/bench_int8_kernels.py`` (which prints the CPU it ran on).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgetl_runtime.backends.cpu import CpuFamily, CpuInfo
from edgetl_runtime.bundle.manifest import Manifest, Precision

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


# The `edgetl export --target` that specialises int8 for each CPU family.
EXPORT_TARGET = {
    CpuFamily.X86_VNNI: "x86-vnni",
    CpuFamily.X86_AVX2: "x86-avx2",
    CpuFamily.ARM64: "arm",
    CpuFamily.OTHER: "portable",
}


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
        f"{EXPORT_TARGET[cpu.family]}`) for an int8 model meant for this device"
    )


def int8_problem(manifest: Manifest) -> str | None:
    """Why TensorRT cannot build the bundle's int8 model, or None when it can.

    TensorRT takes explicit quantization only as symmetric int8 Q/DQ (zero point 0) with biases in
    float: its ONNX parser refuses uint8 and int32 DequantizeLinear. The manifest records how the int8
    model was quantized, so this is decided without parsing it.
    """
    if Precision.INT8 not in manifest.precisions:
        return "the bundle ships no int8 model"
    q = manifest.quantization
    bad = []
    extra = q.get("ort_arguments", {}).get("extra_options", {})
    if q.get("quant_format") != "qdq" or extra.get("UseQDQContribOps"):
        bad.append(f"it is in {q.get('quant_format')!r} form, not standard QuantizeLinear/DequantizeLinear (qdq)")
    if q.get("activation_type") != "int8" or q.get("weight_type") != "int8":
        bad.append(f"activations/weights are {q.get('activation_type')}/{q.get('weight_type')}, not int8/int8")
    if not (q.get("activation_symmetric") and q.get("weight_symmetric")):
        bad.append("its Q/DQ are asymmetric (zero point != 0)")
    if q.get("quantize_bias", True):
        bad.append("its biases are int32 behind DequantizeLinear")
    if not bad:
        return None
    return (
        "the bundle's int8 model is quantized for onnxruntime CPU, not TensorRT (" + "; ".join(bad) + "). "
        "Fix: re-export with `edgetl export ... --precision fp32,int8 --quant-preset tensorrt`, or use fp16"
    )
