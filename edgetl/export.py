"""Host export pipeline: backbone -> fp32 ONNX (parity-checked) -> int8 / fp16 -> one verified bundle."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.backbones import Backbone, check_image_size, create_backbone
from edgetl.datasets import ImageDataset, load_fashion_mnist
from edgetl.pooling import PooledFeatures, parse_pooling
from edgetl.shipped_head import HeadConfig, ShippedHead, check_head_classes, head_for_bundle
from edgetl.sources import export_data, source_name, synthetic_images, training_data
from edgetl_exporters.bundle_writer import npz_bytes, write_bundle
from edgetl_exporters.onnx_export import ExportConfig, export_features_onnx
from edgetl_runtime.arguments import to_precisions
from edgetl_runtime.bundle.manifest import GOLDEN_NAME, HEAD_NAME, BackboneInfo, Manifest, Precision
from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.errors import ConfigError, DatasetError, EdgeTLError, QuantizationError
from edgetl_runtime.preprocess import PreprocessSpec, preprocess_batch

GOLDEN_COUNT = 4
CALIBRATION_SAMPLING = "class-balanced, classes interleaved, seed 0"
GUARD_SHOTS = 5  # images per class the int8 guard's few-shot probe enrols (quantize_guarded's default shots)
VERSIONED = ("edgetl", "torch", "timm", "onnx", "onnxruntime", "onnxslim", "numpy")


@dataclass(frozen=True)
class BundleConfig:
    """What goes into a bundle and how it is checked."""

    precisions: tuple[Precision, ...] = (Precision.FP32, Precision.INT8)
    calibration_count: int = 300
    eval_count: int = 1000  # held-out images for the int8 guard: enough that a 1-point drop is resolvable
    max_accuracy_drop: float = 1.0
    pooling: str = "auto"  # exported feature vector, see edgetl.pooling ("avg", "grid3", "avg+grid2", ...)
    crop_pct: float | None = None  # None: see ``feature_defaults``; 1.0 keeps objects that fill the frame whole
    export: ExportConfig = field(default_factory=ExportConfig)
    fp16: Any = None  # an edgetl_exporters.quantization.Fp16Config (None: its defaults)
    skip_failed: bool = False  # ship the precisions that passed when int8 or fp16 fails (with a warning)
    ship_head: bool | None = None  # None: when head data is given or a fine-tuned run's training data is at hand
    head: HeadConfig = field(default_factory=HeadConfig)  # how that head is fitted (edgetl.shipped_head)

    def __post_init__(self) -> None:
        precisions = to_precisions(self.precisions)
        object.__setattr__(self, "precisions", precisions)
        if Precision.FP32 not in precisions:
            raise ConfigError("Every bundle ships the fp32 model (the reference for golden checks); add fp32.")
        if self.pooling != "auto":
            parse_pooling(self.pooling)
        if self.calibration_count < 1 or self.eval_count < 1:
            raise ConfigError("calibration_count and eval_count must be positive.")


@dataclass
class ExportResult:
    path: Path
    bundle: Bundle
    report: dict[str, Any]


def export_bundle(
    model: str | Path | Backbone,
    output: str | Path,
    *,
    weights: str = "bundled",
    data: ImageDataset | None = None,
    data_source: str | None = None,
    config: BundleConfig | None = None,
    image_size: int | None = None,
    quantize_config: Any = None,
    head_data: ImageDataset | None = None,
    head_source: str | None = None,
) -> ExportResult:
    """Export ``model`` into one ``.edgetl`` bundle, validating every precision on real images.

    Args:
        model: a backbone name, a fine-tuned run directory, or a :class:`Backbone`.
        output: the bundle path; written atomically, only after every check passed.
        weights: weights source when ``model`` is a name (``bundled``, ``hub``, ``none`` or a path).
        data: target-domain images: calibration and accuracy guard draw disjoint subsets. Labelled
            data gets the few-shot accuracy guard; unlabelled (``labelled=False``) a feature-agreement
            guard. ``None``: a fine-tuned run's own training data (recorded in its config); without
            such a record int8 is refused (nothing silently calibrates on another domain), and fp32 /
            fp16 are checked on synthetic images.
        data_source: how ``data`` is described in the manifest's calibration provenance.
        config: precisions and checks.
        image_size: square input resolution override.
        quantize_config: an ``edgetl_exporters.quantization.QuantizeConfig`` (default: ``portable``, exact and
            fast on x86 with or without VNNI and on ARM64; see ``QuantizeConfig.preset``).
        head_data: labelled images to ship a head for (class statistics of the bundle's own fp32 features,
            see :mod:`edgetl.shipped_head`); a fine-tuned run defaults to its recorded training data.
        head_source: how ``head_data`` is described in the manifest.
    """
    config = config or BundleConfig()
    if head_data is not None:
        check_head_classes(list(head_data.classes))  # before minutes of export work
    backbone = model if isinstance(model, Backbone) else create_backbone(model, weights)
    if image_size is not None:
        check_image_size(backbone.model, backbone.timm_name, image_size)
    data, data_source = export_data(backbone, data, data_source, config.precisions)
    pooling, crop_pct = feature_defaults(config, backbone)
    config = dataclasses.replace(config, pooling=pooling, crop_pct=crop_pct)
    spec = bundle_spec(backbone.spec, image_size, config.crop_pct)
    calib, held_out = _calibration_split(data, config)
    calib_inputs = preprocess_batch(list(calib.images), spec)  # (C, 3, H, W)
    features_model = PooledFeatures(backbone.model, config.pooling).eval()
    members: dict[str, bytes] = {}
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgetl-export-") as tmp:
        fp32_path = Path(tmp) / Precision.FP32.member
        parity = export_features_onnx(features_model, calib_inputs[:32], fp32_path, config.export)
        report["fp32_parity"] = parity.to_dict()
        members[Precision.FP32.member] = fp32_path.read_bytes()
        quant = _quantized_members(fp32_path, calib_inputs, held_out, spec, config, quantize_config, data_source)
        for name, (data_bytes, part_report) in quant.items():
            members[name] = data_bytes
            report[name] = part_report
    shipped = tuple(p for p in config.precisions if p is Precision.FP32 or p.member in members)
    config = dataclasses.replace(config, precisions=shipped)  # skip_failed may have dropped one
    golden = _golden(features_model, calib_inputs[:GOLDEN_COUNT], members)
    members[GOLDEN_NAME] = npz_bytes(golden)
    head = _shipped_head(backbone, members, spec, config, head_data, head_source)
    if head is not None:
        members[HEAD_NAME] = npz_bytes(head.arrays)
    info = BackboneInfo(
        backbone.name,
        backbone.timm_name,
        backbone.weights,
        int(golden["features"].shape[1]),
        config.export.input_name,
        config.export.output_name,
        config.pooling,
    )
    manifest = _manifest(info, spec, config, report, data_source, head)
    bundle = write_bundle(output, manifest, members)
    return ExportResult(Path(output), bundle, report)


# Measured on Fashion-MNIST with the bundled Lite0 at 224 px through the device runtime (fp32, `auto` head,
# 1000 test images, 3 seeds; benchmarks/bench_default_export.py): avg pooling with the model's crop
# 60.1 / 74.5 at K = 1 / 5, a 3x3 grid with no crop 62.9 / 77.5 (and best on train-only validation,
# benchmarks/select_pooling.py). The grid costs 9x the feature width: 46 KB per cached sample instead
# of 5 KB and a 10 ms `auto` fit at 50 samples instead of 0.8 ms (still 300x faster than scikit-learn).
FEWSHOT_POOLING = "grid3"
FEWSHOT_CROP_PCT = 1.0


def feature_defaults(config: BundleConfig, backbone: Backbone) -> tuple[str, float | None]:
    """The pooling and crop a bundle exports when the config leaves them to edgetl.

    A pretrained backbone gets the few-shot choice above; a fine-tuned run keeps avg pooling and its
    own crop, which its features (and the head it ships) were trained with.
    """
    fine_tuned = backbone.head is not None
    pooling = config.pooling if config.pooling != "auto" else ("avg" if fine_tuned else FEWSHOT_POOLING)
    crop = config.crop_pct if config.crop_pct is not None else (None if fine_tuned else FEWSHOT_CROP_PCT)
    return pooling, crop


def bundle_spec(spec: PreprocessSpec, image_size: int | None, crop_pct: float | None) -> PreprocessSpec:
    """The preprocessing the bundle promises: the backbone's, with the export's overrides."""
    if image_size is not None:
        spec = spec.with_size(image_size)
    return spec if crop_pct is None else dataclasses.replace(spec, crop_pct=crop_pct)


def _calibration_split(data: ImageDataset | None, config: BundleConfig) -> tuple[ImageDataset, ImageDataset]:
    """Disjoint calibration and held-out sets (the guard never scores calibration images).

    Labelled data is drawn class-balanced; held-out images are only needed (and only required) when
    int8 is built, and then calibration takes at most half of the smallest class. Unlabelled data is
    drawn at random; its guard judges feature agreement.
    """
    data = data if data is not None else synthetic_images()
    if data.labelled:
        data.require_trainable("calibration and the int8 accuracy guard")
    elif len(data) == 0:
        raise DatasetError("The calibration folder holds no images; give it at least a few dozen.")
    wants_guard = Precision.INT8 in config.precisions
    rng = np.random.default_rng(0)
    groups = range(len(data.classes)) if data.labelled else [0]
    order = [rng.permutation(np.flatnonzero(data.labels == c)) for c in groups]
    calib_per_class = max(1, -(-config.calibration_count // len(order)))
    if wants_guard:  # a small folder: calibration must not swallow every image the guard scores
        calib_per_class = min(calib_per_class, max(1, min(len(idx) for idx in order) // 2))
    # Enough per class that every episode has queries (the probe enrols GUARD_SHOTS), even with many classes.
    eval_per_class = max(GUARD_SHOTS + 3, -(-config.eval_count // len(order))) if wants_guard else 0
    # Round-robin over the classes, so any prefix (quantization keeps the first num_calibration) stays balanced.
    picks = [(rank, c, i) for c, idx in enumerate(order) for rank, i in enumerate(idx[:calib_per_class])]
    calib = np.array([i for _, _, i in sorted(picks)], dtype=np.int64)
    held_out = np.concatenate([idx[calib_per_class : calib_per_class + eval_per_class] for idx in order])
    if wants_guard and len(held_out) == 0:
        raise DatasetError(
            f"Only {len(data)} images: none is left for the int8 accuracy guard after calibration. "
            "Fix: pass more images, or lower calibration_count (--calib-count)."
        )
    return data.subset(calib), data.subset(np.sort(held_out).astype(np.int64))


def _quantized_members(
    fp32_path: Path,
    calib_inputs: np.ndarray,
    held_out: ImageDataset,
    spec: PreprocessSpec,
    config: BundleConfig,
    quantize_config: Any,
    data_source: str,
) -> dict[str, tuple[bytes, dict[str, Any]]]:
    """The int8 / fp16 members asked for. Each is tried even if the other failed, so a failure names what
    passed and how to ship it (``--precision``, ``--skip-failed``) instead of discarding it silently."""
    from edgetl_exporters.quantization import QuantizeConfig, quantize

    out: dict[str, tuple[bytes, dict[str, Any]]] = {}
    failed: dict[Precision, str] = {}

    def member(precision: Precision, images: np.ndarray, **options: Any) -> None:
        """Build one member beside the fp32 model; a refusal is recorded, not raised, so the other is tried."""
        path = fp32_path.with_name(precision.member)
        try:
            report = quantize(fp32_path, path, precision, images, **options)
            out[precision.member] = (path.read_bytes(), report)
        except QuantizationError as exc:
            failed[precision] = str(exc)

    if Precision.FP16 in config.precisions:  # first: seconds, where int8's guard takes minutes
        member(Precision.FP16, calib_inputs[:32], config=config.fp16)
    if Precision.INT8 in config.precisions:
        eval_inputs = preprocess_batch(list(held_out.images), spec)
        qconfig = quantize_config or QuantizeConfig.portable(num_calibration=config.calibration_count)
        labels = held_out.labels if held_out.labelled else None
        thinnest = int(np.bincount(labels)[np.unique(labels)].min()) if labels is not None and len(labels) else 0
        if labels is not None and thinnest <= GUARD_SHOTS:  # a small folder: the few-shot probe has no queries
            warnings.warn(
                f"only {thinnest} held-out image(s) in a class, too few for the int8 accuracy guard (it enrols "
                f"{GUARD_SHOTS} per class and scores the rest): int8 is judged by feature agreement with fp32 "
                f"instead. Fix: give more than {2 * GUARD_SHOTS + 2} images per class for the accuracy guard.",
                stacklevel=3,
            )
            labels = None
        source = f"{data_source} ({CALIBRATION_SAMPLING})"
        member(Precision.INT8, calib_inputs, eval_images=eval_inputs, eval_labels=labels, config=qconfig,
               max_drop=config.max_accuracy_drop, source=source)  # fmt: skip
    if failed:
        passed = [p.value for p in config.precisions if p not in failed]
        what = "; ".join(f"{p.value}: {msg}" for p, msg in failed.items())
        if not config.skip_failed:
            raise QuantizationError(
                f"{what}. Nothing was written. {', '.join(passed)} passed: to ship them without "
                f"{', '.join(p.value for p in failed)}, rerun with --precision {','.join(passed)} or add "
                "--skip-failed (BundleConfig(skip_failed=True))."
            )
        warnings.warn(f"left out of the bundle (--skip-failed): {what}", stacklevel=3)
    return out


def _golden(features_model: Any, inputs: np.ndarray, members: dict[str, bytes]) -> dict[str, np.ndarray]:
    """Fixed inputs, the torch fp32 features, and the host's onnxruntime output for each reduced precision."""
    from edgetl_runtime.backends.base import golden_reference_key
    from edgetl_runtime.backends.onnxruntime import make_session

    arrays = {"inputs": inputs, "features": _torch_features(features_model, inputs)}
    for precision in (Precision.INT8, Precision.FP16):
        if precision.member in members:
            session = make_session(members[precision.member])
            arrays[golden_reference_key(precision)] = session.run(None, {session.get_inputs()[0].name: inputs})[0]
    return arrays


def _torch_features(features_model: Any, inputs: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        features: np.ndarray = features_model(torch.from_numpy(inputs)).numpy().astype(np.float32)  # (N, D)
    return features


def _shipped_head(
    backbone: Backbone,
    members: dict[str, bytes],
    spec: PreprocessSpec,
    config: BundleConfig,
    head_data: ImageDataset | None,
    head_source: str | None,
) -> ShippedHead | None:
    """The head a device continues from: fitted on ``head_data``, or on a fine-tuned run's own training data."""
    if config.ship_head is False:
        return None
    if head_data is None and backbone.head is not None:
        record = backbone.training_data
        if record and record.get("source"):
            head_source = f"{source_name(str(record['source']))} (the fine-tune run's training data)"
            head_data = training_data(record)
        else:
            warnings.warn(
                "the fine-tuned classifier is not shipped: the run records no training data to fit the device's head "
                "on. Fix: pass its labelled images with --head-from DATA (export_bundle(head_data=...)).",
                stacklevel=3,
            )
    if head_data is None:
        if config.ship_head:
            raise ConfigError("ship_head=True needs labelled images. Fix: pass --head-from DATA (head_data=...).")
        return None
    return head_for_bundle(backbone, members, spec, head_data, head_source or "caller's images", config.head)


def _manifest(
    info: BackboneInfo,
    spec: PreprocessSpec,
    config: BundleConfig,
    report: dict[str, Any],
    data_source: str,
    head: ShippedHead | None,
) -> Manifest:
    quant = report.get(Precision.INT8.member)
    quantization, calibration = {}, {}
    if quant:  # int8 was built: how, and from which images (the first num_calibration of the prepared set)
        from edgetl_runtime.backends.int8_targets import infer_targets

        targets = list(infer_targets(quant["config"]))  # the CPU families this int8 form is exact and fast on
        quantization = {
            **quant["config"],
            "targets": targets,
            "guard": quant["guard"],
            "ort_arguments": quant["ort_arguments"],
        }
        calibration = {"count": quant["calibration_count"], "source": data_source, "sampling": CALIBRATION_SAMPLING}
    return Manifest(
        backbone=info,
        preprocess=spec,
        members={},
        precisions=config.precisions,
        quantization=quantization,
        calibration=calibration,
        validation={"export": config.export.to_dict(), "pooling": config.pooling, **report},
        head_labels=() if head is None else tuple(str(c) for c in head.prior.classes),
        head={} if head is None else head.section,
        versions=_versions(),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )


def _versions() -> dict[str, str]:
    import platform

    found = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in VERSIONED:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def ensure_bundle(
    model: str,
    output_dir: Path,
    *,
    image_size: int | None = None,
    weights: str = "bundled",
    precisions: tuple[str, ...] = ("fp32", "int8"),
) -> tuple[Path, list[str]]:
    """Reuse ``output_dir/<model>[_<size>].edgetl`` when it ships ``precisions``, else export it (int8
    calibrated on Fashion-MNIST's train split, what ``edgetl bench latency`` times).

    If quantization fails, an fp32-only bundle is exported instead; the returned notes say why.
    """
    wanted = to_precisions(("fp32", *precisions), "export precision")
    path = Path(output_dir) / f"{model}{'' if image_size is None else f'_{image_size}'}.edgetl"
    if path.is_file() and set(wanted) <= set(Bundle.open(path).manifest.precisions):
        return path, []
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        calib = load_fashion_mnist("train") if Precision.INT8 in wanted else None  # what the latency bench times
        export_bundle(model, path, weights=weights, data=calib, data_source="fashion-mnist:train" if calib else None,
                      config=BundleConfig(precisions=wanted), image_size=image_size)  # fmt: skip
        return path, []
    except (EdgeTLError, ImportError) as exc:
        if wanted == (Precision.FP32,):
            raise
        note = f"exporting {[p.value for p in wanted]} failed ({type(exc).__name__}: {exc}); exported fp32 only"
    export_bundle(
        model, path, weights=weights, config=BundleConfig(precisions=(Precision.FP32,)), image_size=image_size
    )
    return path, [note]
