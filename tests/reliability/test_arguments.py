"""API arguments that must keep working once validated: labels are NFC (two spellings are one class), numpy id
arrays are ids, a numpy int is a thread count. The refusals are cases of test_bad_input_corpus.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ._support import BLUE, GREEN, RED, load_learner

pytestmark = pytest.mark.runtime


def test_labels_are_nfc_so_two_spellings_are_one_class(reliability_bundle: Path) -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    with load_learner(reliability_bundle) as learner:
        learner.add(RED, composed)
        learner.add(GREEN[:1], decomposed)
        learner.add(BLUE[:1], "\U0001f468\u200d\U0001f469\u200d\U0001f467 family")  # ZWJ is not a control character
        assert learner.counts()[composed] == 4
        assert learner.remove(label=decomposed) == 4
        assert learner.store.labels() == ["\U0001f468\u200d\U0001f469\u200d\U0001f467 family"]


def test_numpy_id_arrays_are_accepted(reliability_bundle: Path) -> None:
    with load_learner(reliability_bundle) as learner:
        ids = learner.add(RED + GREEN, ["red"] * 3 + ["green"] * 3)
        assert learner.remove(ids=np.array(ids[:2])) == 2
        assert learner.remove(ids=np.array(ids[2:4], dtype=np.uint32)) == 2
        assert learner.remove(ids=(np.int64(ids[4]),)) == 1
        assert learner.remove(ids=np.array([], dtype=np.int64)) == 0
        assert learner.store.samples()[0].tolist() == [ids[5]]


def test_threads_in_range_still_work(reliability_bundle: Path) -> None:
    with load_learner(reliability_bundle, threads=np.int64(1)) as learner:
        assert learner.backend is not None
