"""Concurrent use of one state: eight threads predict while one enrols (no exception, no torn read, a
consistent final state), an add during a refit is not lost, waiting threads share one refit, and a running
learner sees what other connections and processes enrolled or removed.

``EDGETL_STRESS_SECONDS`` sets how long each run lasts (CI default 2 s; benchmarks/stress.py runs >= 10 s).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edgetl_runtime.learner import Learner

from ._support import BLUE, COLORS, GREEN, RED, class_images, env_float, load_learner, run_concurrency

pytestmark = pytest.mark.runtime

SECONDS = env_float("EDGETL_STRESS_SECONDS", 2.0)


@pytest.mark.parametrize(("head", "pause"), [("ncm", 0.0), ("auto", 0.02), ("adaptive", 0.02)])
def test_eight_predictors_one_enroller(reliability_bundle: Path, tmp_path: Path, head: str, pause: float) -> None:
    seconds = SECONDS if head == "ncm" else SECONDS / 2  # the default head re-adapts as the predictors' images arrive
    result = run_concurrency(reliability_bundle, tmp_path / "state.sqlite", seconds, head=head, enrol_pause=pause)
    assert result["n_errors"] == 0, result["errors"]
    assert result["torn"] == 0, result
    assert result["corrupt"] == 0, result["problems"]
    assert result["adds"] > 0 and result["predict_calls"] > 0 and result["proba_calls"] > 0, result
    if head == "adaptive":  # it re-adapted to the predictors' images while they ran
        assert result["seen"] >= 20, result


def test_an_add_during_a_refit_is_not_lost(reliability_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A class enrolled while another thread is refitting must be in the next prediction's head.

    Replays the interleaving: the refit reads the samples, then another thread's ``add`` starts (it
    waits for the refit to publish, then commits and updates the head).
    """
    learner = Learner.load(reliability_bundle, backend="onnxruntime", head="ncm")
    learner.add(class_images(COLORS["red"], 1, 0), "red")
    read_samples = learner.store.samples_with_keys  # what a refit reads
    enrol = threading.Thread(target=learner.add, args=(class_images(COLORS["blue"], 1, 1), "blue"))

    def samples_then_enrol() -> Any:
        monkeypatch.setattr(learner.store, "samples_with_keys", read_samples)  # only the first read is intercepted
        result = read_samples()
        enrol.start()
        time.sleep(0.2)  # the enroller has extracted its features and waits for the head
        return result

    monkeypatch.setattr(learner.store, "samples_with_keys", samples_then_enrol)
    learner.fit()  # fits on {red} while "blue" is being enrolled
    enrol.join()
    assert sorted(learner.classes_) == ["blue", "red"]
    learner.close()


def test_threads_waiting_on_a_refit_share_it(reliability_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight predictions that find the head stale cause ONE refit, not eight in a row behind the lock."""
    learner = Learner.load(reliability_bundle, backend="onnxruntime", head="ncm")
    learner.add(class_images(COLORS["red"], 1, 0), "red")
    learner.add(class_images(COLORS["green"], 1, 1), "green")
    read_samples, reads = learner.store.samples_with_keys, []

    def slow_samples() -> Any:
        reads.append(1)
        time.sleep(0.2)  # every predictor arrives while the first refit is running
        return read_samples()

    monkeypatch.setattr(learner.store, "samples_with_keys", slow_samples)
    probe = class_images(COLORS["red"], 1, 2)
    threads = [threading.Thread(target=learner.predict, args=(probe,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reads) == 1
    learner.close()


# ---------------------------------------------------------------------------------------------- other processes


def test_a_running_learner_sees_another_connections_enrolments(reliability_bundle: Path, tmp_path: Path) -> None:
    """Semantics: predict, predict_proba, classes_ and head see every add/remove committed by any process before
    the call (PRAGMA data_version, then a count/sum-of-ids token); a neighbour's cache writes do not refit."""
    state = tmp_path / "s.sqlite"
    with load_learner(reliability_bundle, state) as mine, load_learner(reliability_bundle, state) as other:
        mine.add(RED, "red")
        other.add(GREEN, "green")
        assert sorted(mine.classes_) == ["green", "red"]
        assert mine.predict(GREEN[:1]).tolist() == ["green"]
        fits = []
        real_fit = mine.keeper.fit  # the head keeper refits when it finds the head stale
        mine.keeper.fit = lambda: fits.append(1) or real_fit()  # type: ignore[method-assign]
        other.predict(class_images(COLORS["gray"], 2, 9))  # caches features: data_version moves, samples do not
        mine.predict(RED[:1])
        assert fits == []
        other.remove(label="red")
        assert mine.classes_.tolist() == ["green"] and fits == [1]
        other.add(BLUE, "blue")
        mine.add(RED[:1], "red")  # a stale head is refit, not updated in place: blue must not be lost
        assert sorted(mine.classes_) == ["blue", "green", "red"]


_ENROL_CHILD = """
import sys, numpy as np
from edgetl_runtime.learner import Learner
with Learner.load(sys.argv[1], sys.argv[2], backend="onnxruntime", head="ncm") as learner:
    print(learner.add([np.full((12, 14, 3), (30, 30, 220), np.uint8)], "blue"))
"""


def test_a_running_learner_sees_another_process_enrol(reliability_bundle: Path, tmp_path: Path) -> None:
    state = tmp_path / "s.sqlite"
    with load_learner(reliability_bundle, state) as learner:
        learner.add(RED, "red")
        assert learner.classes_.tolist() == ["red"]
        done = subprocess.run(
            [sys.executable, "-c", _ENROL_CHILD, str(reliability_bundle), str(state)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert learner.classes_.tolist() == ["blue", "red"]
        assert learner.predict(BLUE[:1]).tolist() == ["blue"]
