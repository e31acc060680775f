"""Host (torch) and device (numpy) preprocessing are one spec: equal within 1e-4 on real images."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.datasets import load_fashion_mnist
from edgetl.transforms import eval_transform, to_tensor_uint8
from edgetl_runtime.preprocess import PreprocessSpec, preprocess_batch

pytestmark = pytest.mark.host


def _real_images() -> list[np.ndarray]:
    skimage_data = pytest.importorskip("skimage.data")
    fashion = load_fashion_mnist("test").images[:3]
    return [skimage_data.chelsea(), skimage_data.astronaut(), skimage_data.camera(), *fashion]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [224, 96, 37])
def test_numpy_preprocessing_equals_torch(interpolation: str, size: int) -> None:
    spec = PreprocessSpec(input_size=(size, size), interpolation=interpolation, mean=(0.5,) * 3, std=(0.5,) * 3)
    images = _real_images()
    device = preprocess_batch(images, spec)
    host = np.stack([eval_transform(to_tensor_uint8(img), spec).numpy() for img in images])
    assert device.shape == host.shape == (len(images), 3, size, size)
    assert np.abs(device - host).max() < 1e-4


def test_matches_timm_pil_pipeline_closely() -> None:
    """Against timm's own PIL-based eval transform: same geometry, differences only from uint8 rounding."""
    timm_data = pytest.importorskip("timm.data")
    from PIL import Image

    spec = PreprocessSpec(input_size=(224, 224), interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)
    transform = timm_data.create_transform(
        input_size=(3, 224, 224), interpolation="bicubic", mean=spec.mean, std=spec.std, crop_pct=spec.crop_pct
    )
    image = _real_images()[0]
    ours = preprocess_batch([image], spec)[0]
    theirs = transform(Image.fromarray(image)).numpy()
    assert np.abs(ours - theirs).mean() < 0.01
