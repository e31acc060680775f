"""Exported feature pooling: grid pooling equals adaptive pooling and survives ONNX export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgetl.backbones import create_backbone
from edgetl.pooling import PooledFeatures, grid_pool, parse_pooling, pooled_feature_dim
from edgetl_exporters.onnx_export import export_features_onnx
from edgetl_runtime.errors import ConfigError

pytestmark = pytest.mark.host


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [(7, 7), (4, 6), (2, 2)])
def test_grid_pool_equals_adaptive_pooling(k: int, size: tuple[int, int]) -> None:
    x = torch.randn(2, 5, *size)
    assert torch.allclose(grid_pool(x, k), F.adaptive_avg_pool2d(x, k).flatten(1), atol=1e-6)


def test_avg_pooling_is_timms_own_output() -> None:
    backbone = create_backbone("tf_efficientnet_lite0", weights="none", image_size=32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(PooledFeatures(backbone.model, "avg").eval()(x), backbone.model(x))


def test_combined_blocks_are_each_normalised() -> None:
    backbone = create_backbone("mobilenetv2", weights="none", image_size=64)
    with torch.no_grad():
        out = PooledFeatures(backbone.model, "avg+grid2").eval()(torch.randn(3, 3, 64, 64))
    d = backbone.feature_dim
    assert out.shape == (3, d + 4 * d) == (3, pooled_feature_dim(backbone.model, "avg+grid2", (64, 64)))
    assert torch.allclose(out[:, :d].norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(out[:, d:].norm(dim=1), torch.ones(3), atol=1e-5)


def test_grid_pooling_exports_with_parity(tmp_path: Path) -> None:
    backbone = create_backbone("tf_efficientnet_lite0", weights="none", image_size=64)  # 2x2 final map
    inputs = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    report = export_features_onnx(PooledFeatures(backbone.model, "avg+grid2"), inputs, tmp_path / "g.onnx")
    assert report.min_cosine > 0.9999


@pytest.mark.parametrize("spec", ["", "max", "grid9", "avg+avg", "grid2+"])
def test_bad_pooling_names(spec: str) -> None:
    if spec == "grid2+":
        assert parse_pooling(spec) == ("grid2",)
        return
    with pytest.raises(ConfigError, match="Invalid pooling"):
        parse_pooling(spec)
