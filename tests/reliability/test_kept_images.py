"""Issue 24, item 7: kept pixels are bound to their row. Swapping two rows' pixels made a red image's
re-extracted features a green one's (no warning, integrity_check() empty); swapping height and width
re-extracted a garbled image. Each kept image now carries a digest of its image hash, size and pixels:
a row that does not match is damaged, warned about and left out, as other damage is."""

from __future__ import annotations

import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgetl_runtime.errors import StateError
from edgetl_runtime.learner import Learner
from edgetl_runtime.state.image_policy import decode_pixels, encode_pixels

from ._support import COLORS, class_images

pytestmark = pytest.mark.runtime
RED, GREEN = class_images(COLORS["red"], 2, 0), class_images(COLORS["green"], 2, 1)


def _enrolled(bundle: Path, state: Path) -> dict[str, str]:
    with Learner.load(bundle, state, backend="onnxruntime", head="ncm", keep_images="original") as learner:
        learner.add(RED, "red")
        learner.add(GREEN, "green")
    with sqlite3.connect(state) as db:
        return dict(db.execute("SELECT label, image FROM samples").fetchall())


def _damage(state: Path, how: str, red: str, green: str) -> None:
    with sqlite3.connect(state) as db:
        if how == "swap-rows":
            (a,), (b,) = (db.execute("SELECT pixels FROM images WHERE hash = ?", (k,)).fetchone() for k in (red, green))
            db.execute("UPDATE images SET pixels = ? WHERE hash = ?", (b, red))
            db.execute("UPDATE images SET pixels = ? WHERE hash = ?", (a, green))
        else:  # swap height and width
            db.execute("UPDATE images SET height = width, width = height WHERE hash = ?", (red,))


@pytest.mark.parametrize("how", ["swap-rows", "swap-height-width"])
def test_kept_pixels_that_do_not_match_their_row_are_damage(reliability_bundle: Path, tmp_path: Path, how: str) -> None:
    state = tmp_path / "s.sqlite"
    keys = _enrolled(reliability_bundle, state)
    _damage(state, how, keys["red"], keys["green"])
    with Learner.load(reliability_bundle, state, backend="onnxruntime", head="ncm") as learner:
        store = learner.store
        assert any("do not decode" in p for p in store.integrity_check())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            kept = store.images.kept_pixels(list(keys.values()), skip_damaged=True)
        assert keys["red"] not in kept and any("damaged" in str(w.message) for w in caught)
        with pytest.raises(StateError, match="match their image hash"):
            store.images.kept_pixels([keys["red"]])


def test_pixels_kept_before_the_digest_still_decode() -> None:
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    np.testing.assert_array_equal(decode_pixels(encode_pixels(image), 4, 5, "x", "k" * 64), image)
    tagged = encode_pixels(image, "k" * 64)
    np.testing.assert_array_equal(decode_pixels(tagged, 4, 5, "x", "k" * 64), image)
    with pytest.raises(StateError):
        decode_pixels(tagged, 4, 5, "x", "j" * 64)
