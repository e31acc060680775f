"""Backbone registry, weight sources, and proof that the bundled weights are real ImageNet weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgetl.backbones import available_backbones, create_backbone, resolve_name
from edgetl.transforms import eval_transform, to_tensor_uint8
from edgetl_runtime.errors import CheckpointError, UnknownBackboneError

pytestmark = pytest.mark.host


@pytest.mark.parametrize("name", available_backbones())
def test_every_registered_backbone_gives_pooled_features(name: str) -> None:
    backbone = create_backbone(name, weights="none", image_size=32)
    with torch.no_grad():
        out = backbone.features(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, backbone.feature_dim)
    assert backbone.spec.input_size == (32, 32)
    assert not backbone.model.training


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(UnknownBackboneError, match=r"Did you mean.*mobilenetv3_large"):
        resolve_name("mobilenetv3_lage")
    with pytest.raises(KeyError):  # also a builtin KeyError for callers that catch that
        resolve_name("definitely-not-a-model")


LITES = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")


@pytest.mark.parametrize("name", LITES)
def test_bundled_weights_classify_a_real_cat_photo(name: str) -> None:
    """Each offline checkpoint (loaded by position onto timm's names) is the real ImageNet model: a cat is a cat."""
    skimage_data = pytest.importorskip("skimage.data")
    backbone = create_backbone(name, weights="bundled", num_classes=1000)
    image = eval_transform(to_tensor_uint8(skimage_data.chelsea()), backbone.spec)
    with torch.no_grad():
        probs = backbone.model(image[None]).softmax(-1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert 281 <= top5[0] <= 285, f"top-5 ImageNet classes {top5}: expected a cat (281-285) first"
    assert float(probs[281:286].sum()) > 0.5


def test_local_checkpoints_load_and_bad_ones_fail(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = create_backbone("mobilenetv3_small", weights="none")
    good = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(good))
    loaded = create_backbone("mobilenetv3_small", weights=good)
    for a, b in zip(source.model.state_dict().values(), loaded.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    pt = tmp_path / "w.pt"
    torch.save(source.model.state_dict(), pt)
    create_backbone("mobilenetv3_small", weights=pt)

    with pytest.raises(CheckpointError, match="does not exist"):
        create_backbone("mobilenetv3_small", weights=tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(pt.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="Could not read"):
        create_backbone("mobilenetv3_small", weights=corrupt)
    with pytest.raises(CheckpointError, match="does not fit"):
        create_backbone("mobilenetv2", weights=good)


def test_checkpoint_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "obj": np.dtype("float32")}, evil)  # needs a non-allowlisted global
    with pytest.raises(CheckpointError):
        create_backbone("mobilenetv3_small", weights=evil)


def test_not_a_finetune_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a fine-tuned checkpoint"):
        create_backbone(tmp_path)


def test_tf_lite_default_sizes_are_exportable() -> None:
    """Lite1/Lite2 train at 240/260 px, where TF 'same' padding does not export exactly: the default rounds."""
    sizes = {name: create_backbone(name, weights="none").spec.input_size for name in LITES}
    assert sizes == {
        "tf_efficientnet_lite0": (224, 224),
        "tf_efficientnet_lite1": (224, 224),
        "tf_efficientnet_lite2": (256, 256),
    }
    assert create_backbone("efficientnet_b0", weights="none").spec.input_size == (224, 224)
