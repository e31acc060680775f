"""Issue 24, items 4 and 5: what a merged head counts. A counted key says which label it was counted under,
so a hostile enrolment that lists another device's images under another label cannot make that device skip
its own samples, and a device that relabels one of its images is heard; features that are finite but huge
are refused where they enter instead of merging as zero vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.enrolment import read_enrolment, write_enrolment
from edgetl_runtime.errors import EnrolmentError
from edgetl_runtime.learner import Learner

from ._support import COLORS, class_images

pytestmark = [pytest.mark.runtime, pytest.mark.host]
RED, GREEN, BLUE = (class_images(COLORS[c], 4, i) for i, c in enumerate(("red", "green", "blue")))


def _load(bundle: Path, state: Path | None = None) -> Learner:
    return Learner.load(bundle, state, backend="onnxruntime", precision="fp32", head="ncm")


def _device(bundle: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Device X: red and green enrolled, exported."""
    state = tmp_path / "x.sqlite"
    with _load(bundle, state) as x:
        x.add(RED, "red")
        x.add(GREEN, "green")
        x.export_enrolment(tmp_path / "x.enrol")
    return state, tmp_path / "x.enrol"


def _forged(source: Path, out: Path, bundle: Path, **change: object) -> Path:
    """``source``'s samples written again with ``change`` applied (labels, features): a hash-consistent file."""
    e = read_enrolment(source)
    arrays = {"labels": e.labels, "features": e.features, **change}
    manifest = Bundle.open(bundle).manifest
    write_enrolment(out, manifest=manifest, precision=e.precision, ids=e.ids, keys=e.keys, **arrays)  # type: ignore[arg-type]
    return out


def test_a_hostile_enrolment_cannot_relabel_another_devices_images(reliability_bundle: Path, tmp_path: Path) -> None:
    from edgetl.merge import merge_enrolments

    state, mine = _device(reliability_bundle, tmp_path)
    e = read_enrolment(mine)
    red = e.labels == "red"
    green_mean = e.features[~red].mean(axis=0)
    # The attacker lists X's red images as "green", with green features.
    labels = np.where(red, "green", e.labels)
    features = np.where(red[:, None], green_mean[None, :], e.features).astype(np.float32)
    hostile = _forged(mine, tmp_path / "h.enrol", reliability_bundle, labels=labels, features=features)
    merged = merge_enrolments(reliability_bundle, [hostile], tmp_path / "m.edgetl").path
    with _load(merged, state) as x:
        assert x.store.counts() == {"green": 4, "red": 4}
        assert list(x.predict(RED)) == ["red"] * 4  # X's own enrolment wins over what the merge says


def test_relabelling_an_image_on_a_merged_bundle_is_heard(reliability_bundle: Path, tmp_path: Path) -> None:
    from edgetl.merge import merge_enrolments

    state, mine = _device(reliability_bundle, tmp_path)
    merged = merge_enrolments(reliability_bundle, [mine], tmp_path / "m.edgetl").path
    with _load(merged, state) as x:
        ids, labels, _, _ = x.store.samples_with_keys()
        x.remove(ids=[int(ids[list(labels).index("red")])])
        x.add(RED[:1], "blue")  # the same image, now under another label
        assert "blue" in x.classes_
        proba = x.predict_proba(RED[:1])[0]
        assert proba[list(x.classes_).index("blue")] > 0
        assert list(x.predict(RED[:1])) == ["blue"]


@pytest.mark.parametrize("scale", [1e37, 1e30, 1e20])
def test_huge_finite_features_are_refused_where_they_enter(
    reliability_bundle: Path, tmp_path: Path, scale: float
) -> None:
    _, mine = _device(reliability_bundle, tmp_path)
    e = read_enrolment(mine)
    with pytest.raises(EnrolmentError, match="magnitude"):
        _forged(mine, tmp_path / "big.enrol", reliability_bundle, features=(e.features * scale).astype(np.float32))


def test_normalisation_does_not_overflow_on_huge_rows() -> None:
    from edgetl_runtime.heads.base import power_l2

    X = np.abs(np.random.default_rng(0).standard_normal((4, 16))).astype(np.float32) + 0.1
    for power in (0.5, 1.0, 0.7):
        np.testing.assert_allclose(power_l2(X * np.float32(1e37), power), power_l2(X, power), rtol=1e-5)
