"""Every int8 quantization argument, pinned, validated and serialisable into a bundle manifest.

onnxruntime's ``quantize_static`` defaults (per-tensor weights, all op types, string-keyed
``extra_options``) have changed between releases and are wrong for depthwise networks; this config
names each argument once and hands all of them to onnxruntime explicitly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any

from edgetl_runtime.arguments import to_enum
from edgetl_runtime.backends.cpu import CpuFamily, read_cpu, this_cpu
from edgetl_runtime.backends.int8_targets import infer_targets
from edgetl_runtime.errors import ConfigError, raise_all


class QuantFormat(str, Enum):
    """QDQ (QuantizeLinear/DequantizeLinear pairs, what ORT CPU and TensorRT fuse) or QOperator."""

    QDQ = "qdq"
    QOPERATOR = "qoperator"


class QuantDType(str, Enum):
    QUINT8 = "uint8"
    QINT8 = "int8"


class CalibrationMethod(str, Enum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


# Conv/MatMul/Gemm do the arithmetic; Clip/Relu must be listed so ORT folds ReLU6 into the producer's
# output range (otherwise a DQ -> Clip -> Q re-quantisation survives between every pair of convs);
# Add and GlobalAveragePool keep residuals and pooling in int8 instead of round-tripping to float.
DEFAULT_OP_TYPES: tuple[str, ...] = ("Conv", "MatMul", "Gemm", "Clip", "Relu", "Add", "GlobalAveragePool")
KNOWN_OP_TYPES = frozenset(DEFAULT_OP_TYPES) | {"Mul", "Concat", "MaxPool", "AveragePool", "Sigmoid", "Resize"}


# Target names (as typed on a command line) -> QuantizeConfig class methods. Quantize for the device
# that will run the model, not for the exporting host: ``portable`` is exact and fast on x86 with and
# without VNNI and on ARM64; ``host`` (alias ``auto``) reads the CPU of the machine exporting it.
PRESETS = {
    "portable": "portable",
    "x86-vnni": "x86_vnni",
    "x86-avx2": "x86_avx2",
    "arm": "arm",
    "tensorrt": "tensorrt",
    "host": "host",
    "auto": "host",
}


@dataclass(frozen=True)
class QuantizeConfig:
    """Static int8 quantization settings. Defaults are the x86 ones that are safe with or without VNNI.

    Args:
        quant_format: ``qdq`` (recommended for ORT CPU and TensorRT) or ``qoperator``.
        activation_type / weight_type: ``uint8``/``int8``; u8s8 is the fast path on x86.
        per_channel: per-output-channel weight scales; essential for depthwise convolutions.
        reduce_range: 7-bit weights, avoiding the u8s8 ``vpmaddubsw`` saturation on x86 without VNNI.
        calibrate_method: ``minmax``, ``entropy`` or ``percentile`` (uses ``percentile``).
        num_calibration: how many calibration images are used (the first ``num_calibration`` given).
        calibration_batch_size: images per calibration forward pass (memory only, not results).
        activation_symmetric / weight_symmetric: zero-point 0 ranges (TensorRT wants both).
        op_types: op types to quantize; see ``DEFAULT_OP_TYPES`` for why each is there.
        nodes_to_exclude: node names of the *prepared* graph (see ``prepare_fp32``) kept in float.
        optimize_first: run onnxslim + ORT pre-processing so Q/DQ sit on fused Conv+BN+pad.
        keep_removable_activations: keep Clip/Relu in the graph (needed if an EP drops Q/DQ later).
        quantize_bias: int32 bias behind a DequantizeLinear (what ORT CPU fuses into ``QLinearConv``);
            TensorRT's ONNX parser takes only 8-bit (and narrower) DequantizeLinear, so its preset keeps
            biases in float.
    """

    quant_format: QuantFormat = QuantFormat.QDQ
    activation_type: QuantDType = QuantDType.QUINT8
    weight_type: QuantDType = QuantDType.QINT8
    per_channel: bool = True
    reduce_range: bool = True
    calibrate_method: CalibrationMethod = CalibrationMethod.MINMAX
    percentile: float = 99.999
    num_calibration: int = 300
    calibration_batch_size: int = 16
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    nodes_to_exclude: tuple[str, ...] = ()
    optimize_first: bool = True
    keep_removable_activations: bool = False
    quantize_bias: bool = True

    def __post_init__(self) -> None:
        problems: list[str] = []
        set_ = object.__setattr__
        set_(self, "quant_format", to_enum(QuantFormat, self.quant_format, "quant_format", problems))
        set_(self, "activation_type", to_enum(QuantDType, self.activation_type, "activation_type", problems))
        set_(self, "weight_type", to_enum(QuantDType, self.weight_type, "weight_type", problems))
        set_(self, "calibrate_method", to_enum(CalibrationMethod, self.calibrate_method, "calibrate_method", problems))
        set_(self, "op_types", tuple(self.op_types))
        set_(self, "nodes_to_exclude", tuple(self.nodes_to_exclude))
        problems += self._value_problems()
        raise_all(ConfigError, problems, "Invalid QuantizeConfig")

    def _value_problems(self) -> list[str]:
        problems = []
        if self.activation_type is QuantDType.QINT8 and self.weight_type is QuantDType.QUINT8:
            problems.append("activation int8 with weight uint8 is unsupported by onnxruntime; use int8 weights")
        if not (isinstance(self.percentile, (int, float)) and math.isfinite(self.percentile)):
            problems.append(f"percentile must be a finite number, got {self.percentile!r}")
        elif not 90.0 <= self.percentile <= 100.0:
            problems.append(f"percentile must lie in [90, 100], got {self.percentile}")
        for name in ("num_calibration", "calibration_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive int, got {value!r}")
        unknown = sorted(set(self.op_types) - KNOWN_OP_TYPES)
        if unknown:
            problems.append(f"op_types {unknown} are not supported; choose from {sorted(KNOWN_OP_TYPES)}")
        if not self.op_types:
            problems.append("op_types is empty: nothing would be quantized; use DEFAULT_OP_TYPES")
        if any(not isinstance(n, str) or not n for n in self.nodes_to_exclude):
            problems.append("nodes_to_exclude must hold non-empty node names")
        return problems

    # ----- presets -------------------------------------------------------------------------------

    @classmethod
    def portable(cls, **overrides: Any) -> QuantizeConfig:
        """Every CPU family: u8 activations with 7-bit weights are exact under every x86 kernel (VNNI or
        not) and take MLAS's u8 x s8 dot-product kernels on ARM64. The default export."""
        return cls(**{"reduce_range": True, **overrides})

    @classmethod
    def x86_vnni(cls, **overrides: Any) -> QuantizeConfig:
        """x86 with AVX512-VNNI / AVX-VNNI: u8s8, full 8-bit weights (no saturation risk)."""
        return cls(**{"reduce_range": False, **overrides})

    @classmethod
    def x86_avx2(cls, **overrides: Any) -> QuantizeConfig:
        """x86 without VNNI: u8s8 with 7-bit weights; ORT's s8s8 path is not fused there (slower)."""
        return cls(**{"reduce_range": True, **overrides})

    @classmethod
    def arm(cls, **overrides: Any) -> QuantizeConfig:
        """ARM (Cortex-A, Graviton, Jetson CPU): s8s8 with asymmetric activations, 8-bit weights."""
        return cls(**{"activation_type": QuantDType.QINT8, "reduce_range": False, **overrides})

    @classmethod
    def tensorrt(cls, **overrides: Any) -> QuantizeConfig:
        """Explicit-precision TensorRT: symmetric int8 Q/DQ everywhere, activations clipped at a percentile."""
        preset = {
            "activation_type": QuantDType.QINT8,
            "reduce_range": False,
            "activation_symmetric": True,
            "calibrate_method": CalibrationMethod.PERCENTILE,
            "keep_removable_activations": True,
            "quantize_bias": False,
        }
        return cls(**{**preset, **overrides})

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> QuantizeConfig:
        """The preset called ``name`` (one of :data:`PRESETS`), e.g. from a command line."""
        if name not in PRESETS:
            raise ConfigError(f"Unknown quantization preset {name!r}; choose one of {list(PRESETS)}.")
        factory: Any = getattr(cls, PRESETS[name])
        config: QuantizeConfig = factory(**overrides)
        return config

    @classmethod
    def host(cls, cpuinfo: str | Path | None = None, **overrides: Any) -> QuantizeConfig:
        """The preset for the CPU this runs on: right only when the exporting host is also the device.

        ``cpuinfo`` reads another CPU's ``/proc/cpuinfo``; by default this CPU (or the simulated one).
        """
        family = (read_cpu(cpuinfo) if cpuinfo else this_cpu()).family
        if family is CpuFamily.ARM64:
            return cls.arm(**overrides)
        return cls.x86_vnni(**overrides) if family is CpuFamily.X86_VNNI else cls.x86_avx2(**overrides)

    auto = host  # the former name of ``host``

    @property
    def targets(self) -> tuple[str, ...]:
        """CPU families (or ``tensorrt``) this int8 form is exact and fast on; written into the manifest."""
        return infer_targets(self.to_dict())

    # ----- serialisation and hand-off to onnxruntime ---------------------------------------------

    def with_excluded(self, nodes: list[str] | tuple[str, ...]) -> QuantizeConfig:
        """A copy that also keeps ``nodes`` in float (used by the accuracy guard)."""
        merged = tuple(dict.fromkeys([*self.nodes_to_exclude, *nodes]))
        return QuantizeConfig(**{**self._fields(), "nodes_to_exclude": merged})

    def _fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields; the exact onnxruntime call they expand to is ``core.static_arguments``
        (recorded beside them by ``quantize_prepared``)."""
        return {
            k: (v.value if isinstance(v, Enum) else list(v) if isinstance(v, tuple) else v)
            for k, v in self._fields().items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantizeConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def extra_options(self) -> dict[str, Any]:
        """Every documented ``extra_options`` key, set explicitly (their defaults moved between releases).

        ``CalibStridedMinMax`` depends on the calibration set's size: see ``core.static_arguments``.
        """
        return {
            "ActivationSymmetric": self.activation_symmetric,
            "WeightSymmetric": self.weight_symmetric,
            "CalibTensorRangeSymmetric": self.activation_symmetric,
            "CalibPercentile": float(self.percentile),
            "CalibMovingAverage": False,
            "CalibMovingAverageConstant": 0.01,
            "EnableSubgraph": False,
            "ForceQuantizeNoInputCheck": False,
            "MatMulConstBOnly": True,
            "AddQDQPairToWeight": False,
            "DedicatedQDQPair": False,
            "OpTypesToExcludeOutputQuantization": [],
            "QDQKeepRemovableActivations": self.keep_removable_activations,
            "QDQDisableWeightAdjustForInt32Bias": False,
            "UseQDQContribOps": False,
            "QuantizeBias": self.quantize_bias,
            "ActivationRestrictedAsymmetric": False,
            "MinimumRealRange": None,
            "TensorQuantOverrides": {},
            "QDQOpTypePerChannelSupportToAxis": {},
            "SmoothQuant": False,
            "SmoothQuantAlpha": 0.5,
            "SmoothQuantFolding": True,
            "CalibMaxIntermediateOutputs": None,
            "CalibStridedMinMax": None,
        }

    def ort_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``onnxruntime.quantization.quantize_static`` (all of them but I/O)."""
        from onnxruntime import quantization as q

        dtypes = {QuantDType.QUINT8: q.QuantType.QUInt8, QuantDType.QINT8: q.QuantType.QInt8}
        methods = {
            CalibrationMethod.MINMAX: q.CalibrationMethod.MinMax,
            CalibrationMethod.ENTROPY: q.CalibrationMethod.Entropy,
            CalibrationMethod.PERCENTILE: q.CalibrationMethod.Percentile,
        }
        formats = {QuantFormat.QDQ: q.QuantFormat.QDQ, QuantFormat.QOPERATOR: q.QuantFormat.QOperator}
        return {
            "quant_format": formats[self.quant_format],
            "op_types_to_quantize": list(self.op_types),
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "activation_type": dtypes[self.activation_type],
            "weight_type": dtypes[self.weight_type],
            "nodes_to_quantize": [],
            "nodes_to_exclude": list(self.nodes_to_exclude),
            "use_external_data_format": False,
            "calibrate_method": methods[self.calibrate_method],
            "calibration_providers": ["CPUExecutionProvider"],
            "extra_options": self.extra_options(),
        }


def cpu_has_vnni(cpuinfo: str | Path | None = None) -> bool:
    """Whether the CPU flags list AVX512-VNNI or AVX-VNNI (False when the file is unreadable)."""
    return (read_cpu(cpuinfo) if cpuinfo else this_cpu()).vnni
