"""Crash-test child: enrol forever on a tiny bundle, printing each id after ``add`` returned; killed by SIGKILL.

Protocol (one line each, flushed): ``R <id> <label>`` once ``add`` returned the id; ``X <id>`` before
``remove(ids=[id])`` is called and ``D <id>`` after it returned; ``S`` after ``save()`` returned.
"""

from __future__ import annotations

import sys

import numpy as np

from edgetl_runtime.learner import Learner


def main(bundle: str, state: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = ["red", "green", "blue", "gray"]
    with Learner.load(bundle, state, backend="onnxruntime", head="ncm") as learner:
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
            if i % 5 == 4:
                learner.save()
                print("S", flush=True)
            i += 1


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
