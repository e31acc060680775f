"""Building blocks of int8 quantization: input checks, graph preparation, ``quantize_static``, atomic publish.

The fp32 graph is first slimmed (onnxslim folds TF-"same" padding and BatchNorm into the convs) and
run through onnxruntime's ``quant_pre_process``, so Q/DQ pairs land on the fused convolutions that
ORT turns into ``QLinearConv``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_exporters.quantization.config import CalibrationMethod, QuantizeConfig
from edgetl_runtime.atomic import atomic_write
from edgetl_runtime.errors import ConfigError, InputError, QuantizationError, raise_all

FloatArray = npt.NDArray[np.float32]
HISTOGRAM_SLICE = 32  # images per histogram-collection pass


@dataclass
class QuantizeReport:
    """What was built, from what, and how close it stays to fp32; serialises into the manifest."""

    config: dict[str, Any]
    calibration_count: int
    calibration_source: str
    fp32_bytes: int
    int8_bytes: int
    excluded_nodes: list[str] = field(default_factory=list)
    cosine_mean: float | None = None
    cosine_min: float | None = None
    accuracy_fp32: float | None = None
    accuracy_int8: float | None = None
    accuracy_delta: float | None = None  # int8 - fp32, percentage points
    eval_count: int | None = None
    latency_fp32_ms: float | None = None  # batch-1 p50, prepared fp32 graph
    latency_int8_ms: float | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    ort_arguments: dict[str, Any] = field(default_factory=dict)  # the exact quantize_static keywords used
    guard: dict[str, Any] = field(default_factory=dict)  # how the int8 was judged, with its interval

    @property
    def size_ratio(self) -> float:
        return self.int8_bytes / self.fp32_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "size_ratio": self.size_ratio}


# ----- input checks ------------------------------------------------------------------------------


def model_input_shape(path: str | Path) -> tuple[str, list[int | str]]:
    """Name and shape (ints, or dim names for dynamic axes) of the model's only image input."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise InputError(f"{path} has inputs {[i.name for i in inputs]}; expected exactly one image input")
    dims = inputs[0].type.tensor_type.shape.dim
    return inputs[0].name, [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def check_calibration(calibration: Any, input_shape: list[int | str], limit: int) -> FloatArray:
    """The first ``limit`` calibration images, after checking they can calibrate this model at all."""
    if not isinstance(calibration, np.ndarray):
        raise InputError(f"calibration must be a numpy array (N, 3, H, W), got {type(calibration).__name__}")
    problems = []
    expected = ["N", *input_shape[1:]]
    if calibration.ndim != len(input_shape):
        problems.append(f"calibration has shape {calibration.shape}; the model expects {expected}")
    else:
        for axis, (got, want) in enumerate(zip(calibration.shape[1:], input_shape[1:], strict=True), start=1):
            if isinstance(want, int) and want > 0 and got != want:
                problems.append(f"calibration axis {axis} is {got}, the model expects {want} (shape {expected})")
    if calibration.size == 0:
        problems.append("calibration is empty; pass ~300 preprocessed training images (not the test images)")
    if calibration.dtype != np.float32:
        problems.append(
            f"calibration dtype is {calibration.dtype}; preprocess with the bundle's PreprocessSpec to float32"
        )
    elif calibration.size and not np.isfinite(calibration).all():
        bad = int((~np.isfinite(calibration)).reshape(len(calibration), -1).any(axis=1).sum())
        problems.append(f"{bad} calibration image(s) contain NaN/Inf; drop or re-preprocess them")
    raise_all(InputError, problems, "Calibration data cannot calibrate this model")
    return calibration[:limit]


def _check_excluded(model_path: Path, nodes: tuple[str, ...]) -> None:
    import difflib

    import onnx

    names = [n.name for n in onnx.load(str(model_path), load_external_data=False).graph.node]
    missing = [n for n in nodes if n not in set(names)]
    hints = [f"{n!r} (close: {difflib.get_close_matches(n, names, n=3)})" for n in missing]
    raise_all(
        ConfigError, hints, "nodes_to_exclude names nodes absent from the prepared graph (see prepare_fp32 output)"
    )


# ----- building ----------------------------------------------------------------------------------


def equal_batch_size(n_images: int, batch_size: int) -> int:
    """The largest batch <= ``batch_size`` dividing ``n_images``: ORT's histogram collectors (entropy,
    percentile) stack batches and fail on a ragged last one."""
    return max(d for d in range(1, min(batch_size, n_images) + 1) if n_images % d == 0)


class ArrayCalibrationReader:
    """onnxruntime CalibrationDataReader over an in-memory (N, 3, H, W) array."""

    def __init__(self, input_name: str, images: FloatArray, batch_size: int) -> None:
        size = equal_batch_size(len(images), batch_size)
        self._all = [images[i : i + size] for i in range(0, len(images), size)]
        self._active = self._all
        self._input_name = input_name
        self._pos = 0

    def get_next(self) -> dict[str, FloatArray] | None:
        if self._pos >= len(self._active):
            return None
        self._pos += 1
        return {self._input_name: self._active[self._pos - 1]}

    def __len__(self) -> int:
        return len(self._all)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve only batches [start, end): ORT's strided calibration walks the data in slices."""
        self._active = self._all[start_index:end_index]
        self._pos = 0

    def __iter__(self) -> ArrayCalibrationReader:  # qdq_loss_debug iterates instead of calling get_next
        return self

    def __next__(self) -> dict[str, FloatArray]:
        batch = self.get_next()
        if batch is None:
            raise StopIteration
        return batch


def prepare_fp32(fp32_path: str | Path, out_path: str | Path, optimize: bool = True) -> Path:
    """Slim + ORT pre-process the fp32 graph; node names in ``nodes_to_exclude`` refer to this graph."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(fp32_path))
    if optimize:
        import onnxslim

        model = onnxslim.slim(model)
    try:
        quant_pre_process(
            model, str(out_path), skip_optimization=not optimize, skip_onnx_shape=False, skip_symbolic_shape=False
        )
    except Exception as exc:  # shape inference raises assorted types
        raise QuantizationError(f"Pre-processing {fp32_path} for quantization failed: {exc}") from exc
    return Path(out_path)


def static_arguments(config: QuantizeConfig, n_calibration: int) -> dict[str, Any]:
    """Every keyword ``quantize_static`` gets for ``n_calibration`` images (all but the model paths and reader).

    Histogram calibrators (entropy, percentile) keep every intermediate tensor of every image in
    memory (20+ GB for Lite0 at 224 x 300 images), so they collect ~HISTOGRAM_SLICE images at a time
    through ``CalibStridedMinMax``; the stride depends on how the images split into batches.
    """
    kwargs = config.ort_kwargs()
    if config.calibrate_method is not CalibrationMethod.MINMAX and n_calibration > 0:
        per_batch = equal_batch_size(n_calibration, config.calibration_batch_size)
        batches = n_calibration // per_batch
        fits = [d for d in range(1, batches + 1) if batches % d == 0 and d * per_batch <= HISTOGRAM_SLICE]
        kwargs["extra_options"]["CalibStridedMinMax"] = max(fits, default=1)
    return kwargs


def describe_arguments(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` as JSON (onnxruntime's enums by name), for the manifest: the exact call, replayable."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, bool | int | float | str) or value is None:
            return value
        return getattr(value, "name", str(value))  # QuantType.QInt8 -> "QInt8"

    return {k: plain(v) for k, v in kwargs.items()}


def quantize_prepared(
    prepared: Path, out_path: Path, calibration: FloatArray, config: QuantizeConfig, cache_path: Path | None = None
) -> tuple[Path, dict[str, Any]]:
    """``quantize_static`` with every argument explicit; ranges cached so re-quantizing skips calibration.

    Returns the model and the keywords it was built with, as JSON (:func:`describe_arguments`).
    """
    from onnxruntime.quantization import quantize_static

    _check_excluded(prepared, config.nodes_to_exclude)
    name, _ = model_input_shape(prepared)
    reader = ArrayCalibrationReader(name, calibration, config.calibration_batch_size)
    kwargs = static_arguments(config, len(calibration))
    try:
        quantize_static(str(prepared), str(out_path), reader, calibration_cache_path=cache_path, **kwargs)
    except Exception as exc:
        raise QuantizationError(f"onnxruntime quantize_static failed on {prepared.name}: {exc}") from exc
    return out_path, describe_arguments(kwargs)


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: FloatArray,
    config: QuantizeConfig | None = None,
    source: str = "unspecified",
) -> QuantizeReport:
    """Static int8 quantization of a features model as ``config`` says, without the accuracy guard.

    Args:
        fp32_path: fp32 ONNX, ``images`` (N, 3, H, W) -> ``features`` (N, D).
        out_path: where the int8 ONNX goes; written only on success.
        calibration: (N, 3, H, W) float32 images preprocessed like the eval data, disjoint from the test set.
        config: quantization settings; ``QuantizeConfig()`` when omitted.
        source: calibration provenance for the manifest (dataset, split, indices).
    """
    config = config or QuantizeConfig()
    _, shape = model_input_shape(fp32_path)
    calib = check_calibration(calibration, shape, config.num_calibration)
    with workdir(out_path) as tmp:
        prepared = prepare_fp32(fp32_path, tmp / "prepared.onnx", config.optimize_first)
        built, arguments = quantize_prepared(prepared, tmp / "int8.onnx", calib, config)
        publish(built, out_path)
    return QuantizeReport(
        config=config.to_dict(),
        calibration_count=len(calib),
        calibration_source=source,
        fp32_bytes=Path(fp32_path).stat().st_size,
        int8_bytes=Path(out_path).stat().st_size,
        excluded_nodes=list(config.nodes_to_exclude),
        ort_arguments=arguments,
    )


def publish(src: Path, dest: str | Path) -> Path:
    """Copy a finished temp artefact over ``dest`` atomically (fsync + rename; never half a file)."""
    with open(src, "rb") as fin, atomic_write(dest) as fout:
        shutil.copyfileobj(fin, fout, length=1 << 20)
    return Path(dest)


@contextmanager
def workdir(near: str | Path) -> Iterator[Path]:
    """A scratch folder beside the output (same filesystem, so the final rename is atomic)."""
    parent = Path(near).parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".edgetl-quant.", dir=parent) as tmp:
        yield Path(tmp)
