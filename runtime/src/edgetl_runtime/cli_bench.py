"""``edgetl-device bench``: the chosen backend's latency at a batch size, and where an image's time goes.

The backbone figure is preprocessing + backbone on a batch (what a caller of ``Learner.features`` waits
for); with ``--image`` each stage of one photo's way to a label is timed apart (decode, preprocess,
backbone, head) and end to end, because on a small device the decode and resize of a camera frame can
cost more than an int8 backbone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl_runtime.backends.cpu import this_cpu
from edgetl_runtime.errors import NotFittedError
from edgetl_runtime.images import load_image
from edgetl_runtime.measure.latency import cpu_info, measure
from edgetl_runtime.preprocess import preprocess_batch

if TYPE_CHECKING:
    from edgetl_runtime.learner import Learner

__all__ = ["bench"]


def bench(learner: Learner, *, runs: int, warmup: int, batch: int, image: Path | None = None) -> dict[str, Any]:
    """Latency of the backend the load chose (batch ``batch``), and with ``image`` a per-stage breakdown."""
    spec = learner.bundle.manifest.preprocess
    picture = load_image(image) if image is not None else _noise(spec.input_size)
    batch_images = [picture] * batch
    backbone = measure(lambda: learner.backbone(batch_images), runs=runs, warmup=warmup, items_per_call=batch)
    selection = learner.selection.to_dict() if learner.selection else None
    out: dict[str, Any] = {
        "backend": learner.backend.name,
        "precision": learner.backend.precision.value,
        "int8_kernel": learner.selection.kernel if learner.selection else None,
        "batch": batch,
        "input": str(image) if image is not None else f"random {spec.input_size[0]}x{spec.input_size[1]} image",
        "latency_ms": backbone.to_dict(),  # preprocessing + backbone per call of `batch` images
        "chosen_because": learner.selection.reason if learner.selection else None,
        "candidates_at_load": selection["candidates"] if selection else [],
        "cpu_line": this_cpu().describe(),  # as edgetl-device compare's report names it
        "cpu": cpu_info(),
    }
    if image is not None:
        out["end_to_end_ms"] = _stages(learner, image, runs=runs, warmup=warmup)
    return out


def _noise(size: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)


def _stages(learner: Learner, image: Path, *, runs: int, warmup: int) -> dict[str, Any]:
    """p50 of each stage of one image's way to a label, their share, and the whole way timed as one call."""
    spec, backend = learner.bundle.manifest.preprocess, learner.backend
    pixels = load_image(image)
    batch = preprocess_batch([pixels], spec)
    features = backend.run(batch)
    try:
        head = learner.head
    except NotFittedError:
        head = None  # nothing enrolled: the head's share is left out, and said so
    timers = {
        "decode": lambda: load_image(image),
        "preprocess": lambda: preprocess_batch([pixels], spec),
        "backbone": lambda: backend.run(batch),
    }
    if head is not None:
        timers["head"] = lambda: head.predict_proba(features)

    def whole() -> object:
        out = backend.run(preprocess_batch([load_image(image)], spec))
        return head.predict_proba(out) if head is not None else out

    stages = {name: measure(fn, runs=runs, warmup=warmup).p50_ms for name, fn in timers.items()}
    total = measure(whole, runs=runs, warmup=warmup)
    summed = sum(stages.values())
    return {
        "stages_p50": {name: round(ms, 3) for name, ms in stages.items()},
        "share": {name: round(ms / summed, 3) for name, ms in stages.items()} if summed > 0 else {},
        "total": total.to_dict(),
        "image_size": list(pixels.shape[:2]),
        "note": None if head is not None else "no head yet (nothing enrolled): the head's stage is left out",
    }
