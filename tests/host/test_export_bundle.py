"""A whole export, every precision, read back through the runtime: what the manifest promises is true.

Real EfficientNet-Lite0 ImageNet weights at 64 px on Fashion-MNIST images, so the int8 guard, the
fp16 check and golden verification all run on real data in well under a minute.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgetl.backbones import create_backbone
from edgetl.cli import main
from edgetl.datasets import ImageDataset, from_arrays, load_fashion_mnist
from edgetl.export import BundleConfig, export_bundle
from edgetl.finetune import FinetuneConfig, finetune
from edgetl_exporters.onnx_export import ExportConfig
from edgetl_exporters.quantization import QuantizeConfig
from edgetl_runtime.backends import check_against_golden, create_backend
from edgetl_runtime.backends.int8_targets import int8_problem
from edgetl_runtime.backends.onnxruntime import make_session
from edgetl_runtime.bundle.manifest import Precision
from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.errors import ConfigError
from edgetl_runtime.numerics import row_cosine

pytestmark = pytest.mark.host

ALL = (Precision.FP32, Precision.INT8, Precision.FP16)


@pytest.fixture(scope="module")
def fmnist_subset() -> ImageDataset:
    data = load_fashion_mnist("train")
    rng = np.random.default_rng(0)
    return data.subset(rng.permutation(len(data))[:300])


@pytest.fixture(scope="module")
def lite0_bundle(tmp_path_factory: pytest.TempPathFactory, fmnist_subset: ImageDataset) -> Bundle:
    path = tmp_path_factory.mktemp("export") / "lite0.edgetl"
    config = BundleConfig(precisions=ALL, calibration_count=40, eval_count=80, max_accuracy_drop=50.0)
    quantize = QuantizeConfig.tensorrt(num_calibration=40)
    result = export_bundle(
        "tf_efficientnet_lite0",
        path,
        weights="bundled",
        data=fmnist_subset,
        data_source="fashion-mnist:train (300 random)",
        config=config,
        image_size=64,
        quantize_config=quantize,
    )
    return result.bundle


def test_manifest_records_what_was_built(lite0_bundle: Bundle) -> None:
    m = lite0_bundle.manifest
    assert m.precisions == ALL and set(m.members) == {p.member for p in ALL} | {"golden.npz"}
    with zipfile.ZipFile(lite0_bundle.path) as archive:  # every member's SHA-256, checked independently
        for name, info in m.members.items():
            assert hashlib.sha256(archive.read(name)).hexdigest() == info.sha256
    q = m.quantization
    assert q["activation_type"] == "int8" and q["quantize_bias"] is False and q["calibrate_method"] == "percentile"
    extra = q["ort_arguments"]["extra_options"]
    assert extra["QuantizeBias"] is False and extra["ActivationSymmetric"] is True and extra["CalibStridedMinMax"]
    assert q["ort_arguments"]["nodes_to_exclude"] == q["nodes_to_exclude"]
    assert m.calibration == {
        "count": 40,
        "source": "fashion-mnist:train (300 random)",
        "sampling": "class-balanced, classes interleaved, seed 0",
    }
    int8 = m.validation["backbone.int8.onnx"]
    assert int8["calibration_count"] == 40 and int8["size_ratio"] < 0.35 and int8["eval_count"] >= 80
    parity = m.validation["fp32_parity"]  # recorded as measured on the calibration images, at the spec's tolerance
    assert parity["samples"] == 32 and parity["threshold"] == ExportConfig().min_cosine
    golden = lite0_bundle.golden()  # the shipped fp32 member, run here, against the host's torch features
    session = make_session(lite0_bundle.model_bytes(Precision.FP32))
    shipped = session.run(None, {session.get_inputs()[0].name: golden["inputs"]})[0]
    assert row_cosine(shipped, golden["features"]).min() > 0.9999
    assert m.validation["backbone.fp16.onnx"]["arguments"]["keep_io_types"] is True
    assert {"torch", "timm", "onnx", "onnxruntime", "numpy"} <= set(m.versions)
    assert int8_problem(m) is None  # the tensorrt preset is what TensorRT can build


def test_every_precision_reproduces_golden_through_the_runtime(lite0_bundle: Bundle) -> None:
    golden = lite0_bundle.golden()
    assert {"features", "features_int8", "features_fp16"} <= set(golden)
    for precision in ALL:
        backend = create_backend(lite0_bundle, backend="onnxruntime", precision=precision)  # verifies golden
        assert check_against_golden(backend, lite0_bundle).min_cosine_fp32 > 0.8


def test_export_of_a_finetuned_checkpoint_file_ships_its_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 12)
    images = (rng.integers(0, 60, (len(labels), 28, 28)) + 80 * labels[:, None, None]).astype(np.uint8)
    data = from_arrays(images, labels, ["dark", "mid", "bright"])
    torch.manual_seed(0)
    backbone = create_backbone("mobilenetv3_small_100", weights="none", image_size=32)
    config = FinetuneConfig(strategy="linear-probe", epochs=1, batch_size=8, val_fraction=0.25, progress=False)
    finetune(backbone, data, None, None, config, tmp_path / "run")
    checkpoint = next((tmp_path / "run").glob("*.safetensors"))

    folder = tmp_path / "images"  # the run's images as class folders: the head ships statistics of them
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        (folder / data.classes[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / data.classes[label] / f"{i}.png")
    out = tmp_path / "ft.edgetl"
    argv = ["export", str(checkpoint), "--precision", "fp32,int8", "--calib", "fashion-mnist", "--calib-count", "20"]
    argv += ["--head-from", str(folder)]
    assert main([*argv, "--eval-count", "80", "--max-drop", "100", "--quant-preset", "x86-avx2", "-o", str(out)]) == 0
    bundle = Bundle.open(out)
    assert bundle.manifest.head_labels == ("bright", "dark", "mid") and bundle.head_arrays() is not None
    accuracy = bundle.manifest.head["accuracy"]  # the fine-tuned layer's held-out accuracy beside the shipped head's
    assert {"top1", "linear_head", "by_precision"} <= set(accuracy) and set(accuracy["by_precision"]) == {
        "fp32",
        "int8",
    }
    assert bundle.manifest.quantization["reduce_range"] is True and bundle.manifest.calibration["count"] == 20
    assert main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "probe accuracy" in printed and "node(s) kept in float" in printed and "3 classes: bright" in printed


def test_a_loose_checkpoint_file_says_how_to_load_it(tmp_path: Path) -> None:
    loose = tmp_path / "weights.safetensors"
    loose.write_bytes(b"not a run folder")
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "edgetl_config.json").write_text("{}")  # a run folder, but not its weights file
    for path in (loose, tmp_path / "metrics.json"):
        with pytest.raises(ConfigError, match="--weights"):
            create_backbone(str(path))


def test_calibration_prefixes_stay_class_balanced() -> None:
    """Quantization keeps the first num_calibration images: any prefix must cover the classes evenly."""
    from edgetl.export import _calibration_split

    labels = np.repeat(np.arange(10), 30)
    data = from_arrays(np.zeros((len(labels), 8, 8), np.uint8), labels, [str(c) for c in range(10)])
    calib, held_out = _calibration_split(data, BundleConfig(calibration_count=100, eval_count=200))
    assert np.bincount(calib.labels[:25], minlength=10).max() - np.bincount(calib.labels[:25]).min() <= 1
    assert sorted(np.bincount(calib.labels)) == [10] * 10 and sorted(np.bincount(held_out.labels)) == [20] * 10
    _, small = _calibration_split(data, BundleConfig(calibration_count=100, eval_count=50))
    # 5 per class would leave the guard's 5-shot episodes without queries: at least shots + 3 per class.
    assert sorted(np.bincount(small.labels)) == [8] * 10


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="x86-avx2"):
        QuantizeConfig.preset("avx512")
    assert json.loads(json.dumps(QuantizeConfig.preset("arm").to_dict()))["activation_type"] == "int8"
