"""Crash-test child: enrol forever on a tiny bundle, printing each id after ``add`` returned; killed by SIGKILL.

Protocol (one line each, flushed): ``R <id> <label>`` once ``add`` returned the id; ``X <id>`` before
``remove(ids=[id])`` is called and ``D <id>`` after it returned; ``XL <label>`` / ``DL <label>`` the same around
``remove(label=...)``; ``S`` after ``save()`` returned.

With ``slow-remove`` as a 4th argument every remove holds its write transaction open 20 ms before COMMIT
(after the DELETE ran), so a kill aimed at a remove lands inside the transaction rather than around it.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from edgetl_runtime.learner import Learner
from edgetl_runtime.state.store import FeatureStore


def _slow_removes(store: FeatureStore) -> None:
    real = store.connection.writing

    @contextmanager
    def writing(action: str, **kwargs: bool) -> Iterator[sqlite3.Connection]:
        with real(action, **kwargs) as db:
            yield db
            if action.startswith("Removing"):
                time.sleep(0.02)  # rows deleted, COMMIT not yet run

    store.connection.writing = writing  # type: ignore[method-assign]


def main(bundle: str, state: str, seed: int, slow_remove: bool = False) -> None:
    rng = np.random.default_rng(seed)
    labels = ["red", "green", "blue", "gray"]
    with Learner.load(bundle, state, backend="onnxruntime", head="ncm") as learner:
        if slow_remove:
            _slow_removes(learner.store)
        alive: list[int] = []
        i = 0
        while True:
            n = 1 + i % 3
            label = labels[i % len(labels)]
            images = [rng.integers(0, 256, size=(12 + i % 9, 14, 3), dtype=np.uint8) for _ in range(n)]
            ids = learner.add(images, label)
            print("\n".join(f"R {k} {label}" for k in ids), flush=True)
            alive += ids
            if i % 7 == 6 and alive:
                victim = alive.pop(0)
                print(f"X {victim}", flush=True)
                learner.remove(ids=[victim])
                print(f"D {victim}", flush=True)
            gone = labels[i // 11 % len(labels)]
            if i % 11 == 10 and gone in learner.counts():  # a whole class: one DELETE of several rows
                print(f"XL {gone}", flush=True)
                learner.remove(label=gone)
                print(f"DL {gone}", flush=True)
                present = set(learner.store.samples()[0].tolist())
                alive = [k for k in alive if k in present]
            if i % 5 == 4:
                learner.save()
                print("S", flush=True)
            i += 1


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:] == ["slow-remove"])
