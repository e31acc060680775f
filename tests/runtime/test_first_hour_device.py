"""Issue 16 on the device: what a new user's first hour hits (arrays, rejection, the CLI's promises).

Each test fails on the code before the fix it covers; items are named in the test names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgetl_runtime.errors import InputError
from edgetl_runtime.images import as_image_list
from edgetl_runtime.learner import Learner
from edgetl_runtime.preprocess import PreprocessSpec, preprocess_batch

pytestmark = pytest.mark.runtime

TINY_SPEC = PreprocessSpec(input_size=(16, 16), crop_pct=1.0)


# ------------------------------------------------------------------ item 1: one array is one image


def _photo(h: int = 215, w: int = 215, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_item1_one_hwc_array_is_one_image_not_h_samples(tiny_bundle: Path) -> None:
    img = _photo()
    assert len(as_image_list(img)) == 1
    assert preprocess_batch(img, TINY_SPEC).shape == (1, 3, 16, 16)
    learner = Learner.load(tiny_bundle, backend="onnxruntime")
    assert len(learner.add(img, "brick")) == 1
    learner.add(_photo(seed=1), "stone")
    assert learner.predict(img).shape == (1,)
    assert learner.predict_proba(img).shape == (1, 2)


@pytest.mark.parametrize(
    ("shape", "count"),
    [((20, 24), 1), ((20, 24, 1), 1), ((20, 24, 4), 1), ((5, 20, 24), 5), ((5, 20, 24, 3), 5), ((2, 20, 24, 1), 2)],
)
def test_item1_documented_array_rule(shape: tuple[int, ...], count: int) -> None:
    arr = np.zeros(shape, np.uint8)
    assert len(as_image_list(arr)) == count
    assert len(preprocess_batch(arr, TINY_SPEC)) == count


@pytest.mark.parametrize(
    ("shape", "fix"),
    [((3, 20, 24), "transpose"), ((1, 20, 24), "list"), ((2, 3, 20, 24), "transpose"), ((2, 2, 20, 24, 3), "list")],
)
def test_item1_ambiguous_arrays_are_refused_with_the_way_to_pass_them(shape: tuple[int, ...], fix: str) -> None:
    arr = np.zeros(shape, np.uint8)
    for call in (as_image_list, lambda a: preprocess_batch(a, TINY_SPEC)):
        with pytest.raises(InputError, match=fix):
            call(arr)
