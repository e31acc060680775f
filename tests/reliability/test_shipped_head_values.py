"""Issue 24, item 6: a shipped head's values were only checked for being positive and finite, so alpha 1e-300,
counts 1e-300 or power 1e300 loaded and made every probability NaN (every image the first class). Each value
is now bounded by what a real head can hold, and a head that would still predict NaN is refused at load."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgetl_runtime.bundle.manifest import HEAD_NAME
from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.bundle.shipped_head import head_npz_dict, head_section
from edgetl_runtime.errors import EdgeTLError
from edgetl_runtime.heads import ClassStats, Prior
from edgetl_runtime.learner import Learner

from ._support import COLORS, class_images

pytestmark = pytest.mark.runtime


def _ship(plain: Path, out: Path, prior: Prior) -> Path:
    from edgetl_exporters.bundle_writer import npz_bytes, write_bundle

    original = Bundle.open(plain)
    members = {**original.members, HEAD_NAME: npz_bytes(head_npz_dict(prior))}
    manifest = dataclasses.replace(
        original.manifest,
        head_labels=tuple(str(c) for c in prior.classes),
        head=head_section(prior, accuracy={"top1": 1.0}),
    )
    write_bundle(out, manifest, members)
    return out


@pytest.fixture(scope="module")
def prior(reliability_bundle: Path) -> Prior:
    with Learner.load(reliability_bundle, backend="onnxruntime", shipped_head=False) as learner:
        X = learner.features(class_images(COLORS["red"], 6, 1) + class_images(COLORS["green"], 6, 2))
    return Prior(ClassStats.from_features(X, ["red"] * 6 + ["green"] * 6, rank=4), alpha=0.01, temperature=0.1)


def _degenerate(prior: Prior, case: str) -> Prior:
    stats = prior.stats
    change: dict[str, Any] = {
        "alpha": {"alpha": 1e-300},
        "temperature": {"temperature": 1e-300},
        "counts": {"stats": dataclasses.replace(stats, counts=np.full_like(stats.counts, 1e-300))},
        "power": {"stats": dataclasses.replace(stats, power=1e300)},
        "sums": {"stats": dataclasses.replace(stats, sums=stats.sums * 1e30)},
        "factors": {"stats": dataclasses.replace(stats, factors=stats.factors * 100)},
        "calibration": {"calib_scores": np.full(3, 1e30), "calib_class": np.zeros(3, dtype=np.int64)},
    }[case]
    return dataclasses.replace(prior, **change)


@pytest.mark.parametrize("case", ["alpha", "temperature", "counts", "power", "sums", "factors", "calibration"])
def test_a_shipped_head_beyond_what_a_real_head_holds_is_refused_at_load(
    reliability_bundle: Path, tmp_path: Path, prior: Prior, case: str
) -> None:
    bundle = _ship(reliability_bundle, tmp_path / "h.edgetl", _degenerate(prior, case))
    with pytest.raises(EdgeTLError, match=r"outside|count|longer|larger|cosines"):
        Learner.load(bundle, backend="onnxruntime")


def test_a_real_shipped_head_still_predicts(reliability_bundle: Path, tmp_path: Path, prior: Prior) -> None:
    bundle = _ship(reliability_bundle, tmp_path / "h.edgetl", prior)
    with Learner.load(bundle, backend="onnxruntime") as learner:
        proba = learner.predict_proba(class_images(COLORS["green"], 2, 9))
        assert np.isfinite(proba).all() and list(learner.predict(class_images(COLORS["green"], 2, 9))) == ["green"] * 2


def test_a_head_that_would_predict_nan_is_refused_even_within_the_bounds(prior: Prior) -> None:
    from edgetl_runtime.errors import InputError
    from edgetl_runtime.heads import fit_with_prior

    broken = dataclasses.replace(prior, stats=dataclasses.replace(prior.stats))
    object.__setattr__(broken.stats, "sums", broken.stats.sums * np.nan)  # what no check above lets through
    for head in ("ncm", "lda"):
        with pytest.raises(InputError, match="NaN"):
            fit_with_prior(head, None, [], broken)
