"""Issue 24, item 3: a label the head refuses must be refused before anything is stored, and a state that
already holds one (written before the rule, or edited) must still load, leaving those samples out by name."""

from __future__ import annotations

import sqlite3
import warnings
from pathlib import Path

import pytest

from edgetl_runtime.errors import InputError
from edgetl_runtime.learner import Learner

from ._support import COLORS, class_images, sample_rows

pytestmark = pytest.mark.runtime
RED, GREEN, BLUE = (class_images(COLORS[c], 3, i) for i, c in enumerate(("red", "green", "blue")))


def _load(bundle: Path, state: Path) -> Learner:
    return Learner.load(bundle, state, backend="onnxruntime", head="ncm")


@pytest.mark.parametrize("label", ["unknown", "cat\u202egnp.exe", "\u2066x"])
def test_a_refused_label_stores_nothing_and_the_state_keeps_loading(
    reliability_bundle: Path, tmp_path: Path, label: str
) -> None:
    state = tmp_path / "s.sqlite"
    with _load(reliability_bundle, state) as learner:
        learner.add(RED, "red")
        learner.add(GREEN, "green")
        before = sample_rows(state)
        with pytest.raises(InputError, match=r"reserved|U\+"):
            learner.add(BLUE[:1], label)
        assert sample_rows(state) == before  # validated before the transaction
    with _load(reliability_bundle, state) as again:
        assert list(again.predict(RED[:1])) == ["red"]


def test_a_state_holding_a_refused_label_loads_and_names_the_samples_left_out(
    reliability_bundle: Path, tmp_path: Path
) -> None:
    state = tmp_path / "s.sqlite"
    with _load(reliability_bundle, state) as learner:
        learner.add(RED, "red")
        learner.add(GREEN, "green")
        learner.add(BLUE, "blue")
    with sqlite3.connect(state) as db:  # what an older edgetl (or a hand edit) could leave behind
        db.execute("UPDATE samples SET label = 'unknown' WHERE label = 'blue'")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _load(reliability_bundle, state) as again:
            assert sorted(again.classes_) == ["green", "red"]
            assert list(again.predict(GREEN[:1])) == ["green"]
            assert again.remove(label="unknown") == 3  # and the user can clean it up
    assert any("'unknown': 3" in str(w.message) for w in caught), [str(w.message) for w in caught]
