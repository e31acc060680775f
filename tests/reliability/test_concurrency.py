"""Eight threads predict while one enrols: no exception, no torn read, a consistent final state.

``EDGETL_STRESS_SECONDS`` sets how long each run lasts (CI default 2 s; benchmarks/stress.py runs >= 10 s).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edgetl_runtime.learner import Learner

from ._support import COLORS, class_images, env_float, run_concurrency

pytestmark = pytest.mark.runtime

SECONDS = env_float("EDGETL_STRESS_SECONDS", 2.0)


@pytest.mark.parametrize(("head", "pause"), [("ncm", 0.0), ("auto", 0.02)])
def test_eight_predictors_one_enroller(reliability_bundle: Path, tmp_path: Path, head: str, pause: float) -> None:
    seconds = SECONDS / 2 if head == "auto" else SECONDS
    result = run_concurrency(reliability_bundle, tmp_path / "state.sqlite", seconds, head=head, enrol_pause=pause)
    assert result["n_errors"] == 0, result["errors"]
    assert result["torn"] == 0, result
    assert result["corrupt"] == 0, result["problems"]
    assert result["adds"] > 0 and result["predict_calls"] > 0 and result["proba_calls"] > 0, result


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
