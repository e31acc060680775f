"""The device's int8 kernel choice agrees with the golden check, on a real int8 model.

An 8-bit-weight EfficientNet-Lite0 (the ``x86-vnni`` target) is run under both of onnxruntime's x86
int8 kernels. Where the fast kernel saturates (x86 without VNNI) it fails the golden check and the
runtime must pick the exact one; where it is exact (VNNI, ARM) the runtime must pick the fast one.
Whichever CPU runs this test, the choice must be the first kernel, in the runtime's order, that
passes. A default (``portable``) export must pass under both kernels on every x86 CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgetl.datasets import ImageDataset, load_fashion_mnist
from edgetl.export import BundleConfig, export_bundle
from edgetl_exporters.quantization import QuantizeConfig
from edgetl_runtime.backends import check_against_golden
from edgetl_runtime.backends.choice_cache import ChoiceCache
from edgetl_runtime.backends.cpu import CpuFamily, CpuInfo, real_cpu
from edgetl_runtime.backends.onnxruntime import Int8Kernel, OrtBackend
from edgetl_runtime.backends.selection import _OrtChooser, select_backend
from edgetl_runtime.bundle.manifest import Precision
from edgetl_runtime.bundle.reader import Bundle

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def data() -> ImageDataset:
    full = load_fashion_mnist("train")
    return full.subset(np.random.default_rng(0).permutation(len(full))[:200])


def _export(folder: Path, data: ImageDataset, config: QuantizeConfig) -> Bundle:
    bundle_config = BundleConfig(calibration_count=60, eval_count=100, max_accuracy_drop=50.0)
    return export_bundle(
        "tf_efficientnet_lite0", folder / "b.edgetl", data=data, config=bundle_config, image_size=64,
        quantize_config=config,
    ).bundle  # fmt: skip


@pytest.fixture(scope="module")
def eight_bit(tmp_path_factory: pytest.TempPathFactory, data: ImageDataset) -> Bundle:
    return _export(tmp_path_factory.mktemp("vnni"), data, QuantizeConfig.x86_vnni(num_calibration=60))


def _golden_by_kernel(bundle: Bundle) -> dict[Int8Kernel, bool]:
    return {
        kernel: check_against_golden(OrtBackend.from_bundle(bundle, Precision.INT8, kernel=kernel), bundle).passed
        for kernel in Int8Kernel
    }


@pytest.mark.parametrize("cpu", [None, CpuInfo("as if VNNI", "x86_64", frozenset({"avx512_vnni"}), 2)])
def test_runtime_picks_the_first_kernel_that_passes_the_golden_check(
    eight_bit: Bundle, cpu: CpuInfo | None, tmp_path: Path
) -> None:
    passed = _golden_by_kernel(eight_bit)
    assert passed[Int8Kernel.EXACT], "the exact kernel computes what the host computed, on any x86 CPU"
    device = cpu or real_cpu()
    order = _OrtChooser(eight_bit, 1, True, device).kernels()
    expected = next(k for k in order if passed[k])
    _, selection = select_backend(eight_bit, "onnxruntime", "int8", threads=1, cpu=device)
    assert selection.kernel == expected.value, (passed, order, selection)
    if device.family is CpuFamily.X86_VNNI and real_cpu().family is CpuFamily.X86_VNNI:
        assert passed[Int8Kernel.FAST] and selection.kernel == "fast"  # VNNI: the fast kernel is exact
    tried = {c.kernel: c.passed for c in selection.candidates}
    assert all(tried[k] == passed[Int8Kernel(k)] for k in tried if k)


def test_fast_kernel_on_a_cpu_without_vnni_is_caught_by_the_golden_check(eight_bit: Bundle) -> None:
    """On this CPU without VNNI, 8-bit weights saturate the fast kernel; with VNNI both kernels agree.

    Arithmetic, not a decision: it depends on the real CPU, never on a simulated one.
    """
    passed = _golden_by_kernel(eight_bit)
    if real_cpu().family is CpuFamily.X86_AVX2:
        assert not passed[Int8Kernel.FAST] and passed[Int8Kernel.EXACT]
    elif real_cpu().family is CpuFamily.X86_VNNI:
        assert passed[Int8Kernel.FAST] and passed[Int8Kernel.EXACT]
    else:
        pytest.skip(f"the x86 kernel option does not apply on {real_cpu().family.value}")


@pytest.fixture(scope="module")
def portable(tmp_path_factory: pytest.TempPathFactory, data: ImageDataset) -> Bundle:
    return _export(tmp_path_factory.mktemp("portable"), data, QuantizeConfig.portable(num_calibration=60))


@pytest.mark.usefixtures("each_cpu")
def test_default_export_is_exact_under_both_kernels_and_chosen_fast(tmp_path: Path, portable: Bundle) -> None:
    bundle = portable
    assert bundle.manifest.quantization["targets"] == ["x86-avx2", "x86-vnni", "arm64"]
    assert all(_golden_by_kernel(bundle).values())
    _, selection = select_backend(bundle, "onnxruntime", "best", threads=1, cache=ChoiceCache(tmp_path / "c"))
    int8 = [c for c in selection.candidates if c.precision == "int8"]
    assert int8 and int8[0].kernel == "fast" and int8[0].passed and not selection.warnings
