"""Enrolling one more sample into an N-sample state, beyond the backbone run.

What is timed is everything ``Learner.add`` does once the image's features exist: validation,
hashing, the cache hit, the SQLite transaction and the incremental head update (``partial_fit``).
The backbone runs happen before timing (or never, when the caller hands in features it computed
from the same bundle), and the function checks that none happened while timing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetl_runtime.errors import ConfigError, InputError
from edgetl_runtime.images import as_image_list
from edgetl_runtime.measure.latency import measure


def enrol_one_latency(
    bundle: str | Path,
    images: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    head: str = "auto",
    state: Path | None = None,
    state_size: int = 500,
    runs: int = 100,
    warmup: int = 5,
    precision: str = "best",
    threads: int | None = None,
    features: np.ndarray | None = None,
) -> dict[str, Any]:
    """p50/p90/mean ms of ``Learner.add`` of one image into a ``state_size``-sample state, features cached.

    ``add`` updates the fitted head incrementally (``partial_fit``): alpha, temperature and ``auto``'s
    choice of head stay as the last full ``fit`` left them; the mean includes the periodic fold of the
    ridge head's low-rank inverse terms (every 32 adds).

    Args:
        bundle: the ``.edgetl`` bundle.
        images: at least ``state_size + warmup + runs`` images; the first ``state_size`` fill the state.
        labels: one label per image.
        head: the Learner's head kind.
        state: a fresh SQLite state file (samples already in it would count too); ``None``: in memory.
        features: ``(len(images), D)`` features of ``images`` from this bundle and precision; they are
            put in the cache as a device's earlier backbone runs would have, so no backbone runs at all.
    """
    from edgetl_runtime.learner import Learner

    needed = state_size + warmup + runs
    if len(images) < needed or len(labels) != len(images):
        raise ConfigError(
            f"enrol_one_latency needs state_size + warmup + runs = {needed} images with one label each; "
            f"got {len(images)} images and {len(labels)} labels. Pass more images or lower runs / state_size."
        )
    batch = as_image_list(list(images))
    with Learner.load(bundle, state, backend="onnxruntime", precision=precision, threads=threads, head=head) as learner:
        if features is not None:
            keys = learner.extractor.keys(batch)
            learner.store.put_features(dict(zip(keys, np.asarray(features, dtype=np.float32), strict=True)))
        else:
            learner.features(batch)  # every backbone run happens here, before timing
        runs_before = learner.backbone_runs
        learner.add(batch[:state_size], list(labels[:state_size]))
        learner.fit()
        queue = iter(range(state_size, len(batch)))

        def add_one() -> None:
            i = next(queue)
            learner.add(batch[i : i + 1], [labels[i]])

        stats = measure(add_one, runs=runs, warmup=warmup)
        if learner.backbone_runs != runs_before:
            raise InputError(
                f"{learner.backbone_runs - runs_before} backbone run(s) happened while timing: the "
                "given features do not match this bundle's cache keys; pass features from this bundle, or none."
            )
        samples, dim = len(learner.store), learner.bundle.manifest.backbone.feature_dim
        chosen = str(getattr(learner.head, "kind_", learner.head.kind))  # what auto picked, if auto
    return {
        "p50_ms": stats.p50_ms,
        "p90_ms": stats.p90_ms,
        "mean_ms": stats.mean_ms,
        "runs": stats.runs,
        "warmup": warmup,
        "state_size": state_size,
        "samples_after": samples,
        "feature_dim": dim,
        "head_in_use": chosen,
    }
