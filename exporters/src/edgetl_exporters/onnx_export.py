"""Export a backbone as an ONNX features model, simplify it, and prove it matches PyTorch.

Never export without validating (DESIGN §4.6): the export spec owns the tolerance, and a parity
failure raises one :class:`ParityError` listing every mismatching input.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl_runtime.atomic import atomic_write
from edgetl_runtime.backends.onnxruntime import make_session
from edgetl_runtime.errors import ConfigError, ExportError, InputError, ParityError, raise_all
from edgetl_runtime.numerics import row_cosine

if TYPE_CHECKING:
    import onnx
    import torch


@dataclass(frozen=True)
class ExportConfig:
    """How the features model is exported. Opset and tolerance are pinned, never left to defaults."""

    opset: int = 17
    dynamic_batch: bool = True
    simplify: bool = True
    min_cosine: float = 0.9999
    exporter: str = "torchscript"  # or "dynamo" (torch.export based)
    input_name: str = "images"
    output_name: str = "features"

    def __post_init__(self) -> None:
        problems = []
        if self.opset < 17:
            problems.append(f"opset must be >= 17 (LayerNorm, modern Resize), got {self.opset}")
        if not 0.0 < self.min_cosine <= 1.0:
            problems.append(f"min_cosine must lie in (0, 1], got {self.min_cosine}")
        if self.exporter not in {"torchscript", "dynamo"}:
            problems.append(f"exporter must be 'torchscript' or 'dynamo', got {self.exporter!r}")
        raise_all(ConfigError, problems, "Invalid ExportConfig")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ParityReport:
    """Agreement of the exported model with PyTorch on real inputs."""

    samples: int
    min_cosine: float
    mean_cosine: float
    max_abs_diff: float
    threshold: float
    simplified: bool | None = None  # whether onnxslim's graph shipped (None: not asked for)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_features_onnx(
    model: torch.nn.Module, inputs: np.ndarray, out_path: str | Path, config: ExportConfig | None = None
) -> ParityReport:
    """Export ``model`` (image batch -> ``(N, D)`` features) and validate it on ``inputs``.

    Args:
        model: a torch module in eval mode returning pooled features.
        inputs: ``(N, 3, H, W)`` float32 preprocessed real images, used for tracing and parity.
        out_path: where the ONNX file goes; written only if parity holds.
        config: export settings.
    """
    import torch

    config = config or ExportConfig()
    inputs = _check_inputs(inputs)
    model = model.eval()
    with torch.no_grad():
        reference = model(torch.from_numpy(inputs)).numpy()  # (N, D)
    if reference.ndim != 2 or reference.shape[0] != inputs.shape[0]:
        raise ExportError(
            f"The model returns shape {tuple(reference.shape)} for a batch of {inputs.shape[0]}; a features model must "
            "return (N, D). Create the backbone with num_classes=0 (pooled features), not a classifier or feature map."
        )
    proto, simplified = _torch_to_onnx(model, torch.from_numpy(inputs[:1]), config)
    data = proto.SerializeToString()
    report = dataclasses.replace(validate_parity(data, inputs, reference, config), simplified=simplified)
    with atomic_write(out_path) as fh:
        fh.write(data)
    return report


def _check_inputs(inputs: np.ndarray) -> np.ndarray:
    arr = np.asarray(inputs)
    if arr.ndim != 4 or arr.shape[1] != 3 or len(arr) == 0:
        raise InputError(
            f"Export inputs must be a non-empty (N, 3, H, W) batch of preprocessed images, got {arr.shape}."
        )
    if not np.isfinite(arr).all():
        raise InputError("Export inputs contain NaN or Inf; check the images and the preprocessing.")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _torch_to_onnx(
    model: torch.nn.Module, example: torch.Tensor, config: ExportConfig
) -> tuple[onnx.ModelProto, bool | None]:
    """The checked graph, and whether onnxslim simplified it (None when ``config.simplify`` is off)."""
    import onnx
    import torch

    names: dict[str, Any] = {"input_names": [config.input_name], "output_names": [config.output_name]}
    buffer = io.BytesIO()
    export: Any = torch.onnx.export  # typed for file targets only; it also writes to a buffer and returns a program
    try:
        if config.exporter == "dynamo":
            shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if config.dynamic_batch else None
            program = export(model, (example,), dynamo=True, opset_version=config.opset, dynamic_shapes=shapes, **names)
            proto = program.model_proto
        else:
            axes = {config.input_name: {0: "batch"}, config.output_name: {0: "batch"}} if config.dynamic_batch else None
            export(
                model,
                (example,),
                buffer,
                dynamo=False,
                opset_version=config.opset,
                dynamic_axes=axes,
                do_constant_folding=True,
                **names,
            )
            proto = onnx.load_from_string(buffer.getvalue())
    except Exception as exc:
        other = "torchscript" if config.exporter == "dynamo" else "dynamo"
        raise ExportError(
            f"torch.onnx.export failed ({config.exporter}): {type(exc).__name__}: {exc}. Fix: try "
            f"ExportConfig(exporter={other!r}), or an opset other than {config.opset}; a model with data-dependent "
            "control flow must be made traceable first."
        ) from exc
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"The exported graph fails onnx.checker: {exc}") from exc
    return _simplify(proto) if config.simplify else (proto, None)


def _simplify(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """Fold constants and fuse what onnxslim can; fall back to the original graph, with a warning, if it fails."""
    import warnings

    import onnxslim

    try:
        slim = onnxslim.slim(proto)
    except Exception as exc:  # onnxslim is an optimisation; parity validation still guards the result
        warnings.warn(f"onnxslim failed ({type(exc).__name__}: {exc}); exporting the unsimplified graph", stacklevel=2)
        return proto, False
    return (slim, True) if slim is not None else (proto, False)


PARITY_HEADER = (
    "The ONNX model does not match PyTorch; the export is not trustworthy. Known cause: TF 'same' padding "
    "(timm tf_* models) traces exactly only at input sizes divisible by the network stride (32): try such a size, "
    "or the symmetric-padding variant (e.g. efficientnet_lite0)"
)


def validate_parity(
    onnx_model: bytes, inputs: np.ndarray, reference: np.ndarray, config: ExportConfig | None = None
) -> ParityReport:
    """Run the ONNX model on ``inputs`` with onnxruntime and compare with ``reference`` features."""
    config = config or ExportConfig()
    session = make_session(onnx_model, threads=None)
    got = session.run([config.output_name], {config.input_name: inputs})[0]
    if got.shape != reference.shape:
        raise ParityError(
            f"ONNX output shape {got.shape} differs from PyTorch's {reference.shape}. Fix: export with "
            "dynamic_batch=True (the default) and trace at the batch size used here, or re-check the model's output."
        )
    cosine = row_cosine(got, reference)
    diff = np.abs(got - reference).max(axis=1)
    report = ParityReport(len(inputs), float(cosine.min()), float(cosine.mean()), float(diff.max()), config.min_cosine)
    bad = [i for i, c in enumerate(cosine) if not c >= config.min_cosine]
    if bad:  # one line: the count, the worst input and which ones (a person reads this, not 32 lines)
        worst = min(bad, key=lambda i: float(np.nan_to_num(cosine[i], nan=-2.0)))
        listed = ", ".join(map(str, bad[:8])) + (", ..." if len(bad) > 8 else "")
        raise ParityError(
            f"{PARITY_HEADER} ({len(bad)} of {len(inputs)} inputs below cosine {config.min_cosine}: worst input "
            f"{worst} cosine {cosine[worst]:.6f}, max abs diff {diff[worst]:.3g}; inputs {listed})."
        )
    return report
