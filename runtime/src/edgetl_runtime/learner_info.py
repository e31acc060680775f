"""What the Learner reports: ``info()`` (bundle, backend choice, state, head), an enrolment, an evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime.errors import InputError

if TYPE_CHECKING:
    from edgetl_runtime.learner import Learner

__all__ = ["Enrolled", "accuracy_report", "learner_info"]


@dataclass(frozen=True)
class Enrolled:
    """What one :meth:`Learner.enrol` did: the sample ids, and how many were new, restored or duplicates."""

    ids: list[int]
    added: int
    restored: int  # enrolled before, kept as features only under another model: this model's features added
    duplicates: int  # images enrolled already (same pixels); skipped, or enrolled again, as asked
    counted_by_shipped_head: int = 0  # of the duplicates, those the shipped head counts under this label


def learner_info(learner: Learner) -> dict[str, Any]:
    """One JSON-able dict; every figure comes from the state or the selection, nothing is re-measured."""
    m = learner.bundle.manifest
    return {
        "bundle": str(learner.bundle.path),
        "backbone": m.backbone.name,
        "feature_dim": m.backbone.feature_dim,
        "precisions": [p.value for p in m.precisions],
        "backend": learner.backend.name,
        "precision": learner.backend.precision.value,
        "int8_kernel": learner.selection.kernel if learner.selection else None,
        "chosen_because": learner.selection.reason if learner.selection else "backend given by the caller",
        "selection": learner.selection.to_dict() if learner.selection else None,
        "input_size": list(m.preprocess.input_size),
        "samples": len(learner.store),
        "classes": learner.store.counts(),
        "unavailable_to_this_model": learner.unavailable,
        "state": learner.store.storage(),
        "head": learner.head_kind,
        "adaptation": learner.keeper.adaptation(),
        "shipped_head": learner.keeper.shipped_info(m.head),
    }


def accuracy_report(predicted: npt.NDArray[np.str_], labels: Sequence[Any]) -> dict[str, Any]:
    """Accuracy and per-class recall of ``predicted`` against the true ``labels``."""
    truth = np.asarray([str(v) for v in labels])
    if len(truth) != len(predicted):
        raise InputError(f"Got {len(predicted)} images but {len(truth)} labels; they must match one to one.")
    per_class = {c: float(np.mean(predicted[truth == c] == c)) for c in np.unique(truth)}
    return {"accuracy": float(np.mean(predicted == truth)), "n": len(truth), "per_class_recall": per_class}
