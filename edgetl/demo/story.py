"""The mission on simulated devices: a shipped head predicts the host's classes out of the box, a device adds
new classes from K shots and keeps the old ones, and a fleet merge gives one device what two others learned.

Every device is a torch-free :class:`~edgetl_runtime.learner.Learner` with its own state file; only features
and enrolment files travel between them, as on real devices.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.datasets import ImageDataset, k_shot
from edgetl.merge import merge_enrolments
from edgetl_runtime.learner import Learner


@dataclass(frozen=True)
class Score:
    """Accuracy of one device on one test set, with what it was asked."""

    accuracy: float  # fraction in [0, 1]
    images: int
    classes: int

    def percent(self) -> str:
        return f"{100 * self.accuracy:.1f} % ({self.classes}-way, {self.images} images)"


@dataclass
class StoryResult:
    """What each device scored; ``to_dict`` is the JSON."""

    bundle: str
    precision: str
    shots: int
    out_of_box: Score | None = None  # shipped head, host classes only, nothing enrolled
    extended_old: Score | None = None  # after enrolling the new classes: the host classes still
    extended_new: Score | None = None
    extended_all: Score | None = None  # all classes together
    merged_all: Score | None = None  # a third device on the merged bundle, nothing enrolled
    halves: dict[str, list[str]] = field(default_factory=dict)  # device -> the new classes it learned
    merge_report: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _labels(data: ImageDataset) -> list[str]:
    return [data.classes[i] for i in data.labels]


def _score(learner: Learner, data: ImageDataset) -> Score:
    result = learner.evaluate(list(data.images), _labels(data))
    return Score(float(result["accuracy"]), len(data), len(set(data.labels.tolist())))


def _device(bundle: Path, state: Path, precision: str, threads: int | None) -> Learner:
    return Learner.load(bundle, state, backend="onnxruntime", precision=precision, threads=threads)


def run_story(
    bundle: Path,
    precision: str,
    host_test: ImageDataset,
    new_pool: ImageDataset,
    new_test: ImageDataset,
    shots: int,
    threads: int | None,
    out: Path,
) -> StoryResult:
    """Out of the box on ``host_test``; then K = ``shots`` per class of ``new_pool`` enrolled on one device, and
    split between two devices whose enrolments ``edgetl merge`` folds into a bundle a third device loads."""
    story = StoryResult(bundle.name, precision, shots)
    everything = _concat(host_test, new_test)
    support, _ = k_shot(new_pool, shots, seed=0)
    for old in out.glob("device-*.state.sqlite*"):
        old.unlink()  # a rerun starts every device fresh
    with _device(bundle, out / "device-one.state.sqlite", precision, threads) as one:
        story.out_of_box = _score(one, host_test)
        one.add(list(support.images), _labels(support))
        story.extended_old, story.extended_new = _score(one, host_test), _score(one, new_test)
        story.extended_all = _score(one, everything)
    names = list(new_pool.classes)
    halves = {"device-a": names[: len(names) // 2], "device-b": names[len(names) // 2 :]}
    files = []
    for device, classes in halves.items():
        part = support.subset(np.flatnonzero(np.isin(_labels(support), classes)))
        with _device(bundle, out / f"{device}.state.sqlite", precision, threads) as learner:
            learner.add(list(part.images), _labels(part))
            files.append(learner.export_enrolment(out / f"{device}.enrol").path)
    merged = merge_enrolments(bundle, files, out / "merged.edgetl")
    story.halves, story.merge_report = halves, _merge_summary(merged.report)
    with _device(merged.path, out / "device-c.state.sqlite", precision, threads) as third:
        story.merged_all = _score(third, everything)
    return story


def _concat(a: ImageDataset, b: ImageDataset) -> ImageDataset:
    """``a`` then ``b`` as one labelled set over both class lists (disjoint class names)."""
    images = list(a.images) + list(b.images)
    labels = np.concatenate([a.labels, b.labels + len(a.classes)])
    return ImageDataset(images, labels, list(a.classes) + list(b.classes))


def _merge_summary(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("samples_in", "samples_merged", "duplicates_counted_once", "already_in_head", "new_classes")
    return {k: report.get(k) for k in keys} | {"files": [Path(e["file"]).name for e in report.get("enrolments", [])]}
