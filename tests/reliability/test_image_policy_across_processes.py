"""Issue 24, item 8: the image policy is the file's. With two Learners on one state, A.forget_images() then
B.add([x]) stored x's pixels again although the state now says none; every write reads the policy inside its
own transaction, whichever path it takes (a new image, a re-enrolment, a restored sample)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edgetl_runtime.learner import Learner

from ._support import COLORS, class_images

pytestmark = pytest.mark.runtime
RED, GREEN, BLUE = (class_images(COLORS[c], 3, i) for i, c in enumerate(("red", "green", "blue")))


def _kept(state: Path) -> int:
    with sqlite3.connect(state) as db:
        return int(db.execute("SELECT count(*) FROM images WHERE pixels IS NOT NULL").fetchone()[0])


@pytest.mark.parametrize("what", ["new", "again", "mirror"])
def test_a_forget_in_one_process_holds_for_every_other_writer(
    reliability_bundle: Path, tmp_path: Path, what: str
) -> None:
    state = tmp_path / "s.sqlite"
    flip = what == "mirror"
    with Learner.load(reliability_bundle, state, backend="onnxruntime", head="ncm") as a:
        a.add(RED, "red")
        with Learner.load(reliability_bundle, state, backend="onnxruntime", head="ncm", flip_enrolment=flip) as b:
            assert _kept(state) == 3
            assert a.forget_images() == 3 and _kept(state) == 0
            b.add(RED[:1] if what == "again" else GREEN, "red" if what == "again" else "green")
            assert _kept(state) == 0, "B kept pixels the state's policy forbids"
            assert b.store.image_policy.to_text() == "none"


def test_a_forget_in_one_process_holds_for_a_restored_sample(tmp_path: Path) -> None:
    """A sample kept as features only under fp32 is restored under int8 by enrolling its image again."""
    onnx = pytest.importorskip("onnx")
    from tiny_bundles import tiny_onnx

    from edgetl_runtime.bundle.manifest import Precision

    from ._support import write_tiny_bundle

    stand_in = onnx.load_from_string(tiny_onnx())
    stand_in.doc_string = "int8 stand-in"  # another digest: another model for the state
    extra = {Precision.INT8.member: stand_in.SerializeToString()}
    bundle = write_tiny_bundle(tmp_path / "b.edgetl", int8_copy=True, members_extra=extra)
    state = tmp_path / "s.sqlite"

    def load(precision: str, **kw: object) -> Learner:
        return Learner.load(bundle, state, backend="onnxruntime", precision=precision, head="ncm", **kw)  # type: ignore[arg-type]

    with load("fp32", keep_images="none") as first:
        first.add(RED, "red")
        first.add(GREEN, "green")
    with pytest.warns(UserWarning), load("int8", keep_images="thumbnail") as a, load("int8") as b:
        assert a.forget_images() == 0 and _kept(state) == 0
        b.add(RED, "red")  # restores the three red samples under int8
        assert _kept(state) == 0, "B kept pixels the state's policy forbids"
