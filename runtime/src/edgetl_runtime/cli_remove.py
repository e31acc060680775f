"""``edgetl-device remove`` / ``restore``: forget a class, and bring back a shipped class forgotten here."""

from __future__ import annotations

from edgetl_runtime.learner import Learner


def shipped_classes(learner: Learner) -> list[str]:
    """The bundle's shipped head's classes (removed here or not)."""
    return [] if learner.prior is None else [str(c) for c in learner.prior.classes]


def remove_class(learner: Learner, label: str) -> dict[str, object]:
    """Delete ``label``'s enrolled samples; a shipped class is also forgotten here, which ``restore`` undoes."""
    removed = learner.remove(label=label)
    out: dict[str, object] = {"removed": removed, "classes": learner.counts()}
    if label in learner.removed_shipped_classes():
        out["removed_shipped_class"] = label
        out["note"] = (
            f"{label!r} is a class of the bundle's shipped head: it is no longer predicted on this device "
            f"({removed} enrolled sample(s) deleted). To predict it again: edgetl-device restore --label {label} "
            "(the deleted enrolled samples do not come back)"
        )
    return out


def restore_class(learner: Learner, label: str) -> dict[str, object]:
    """Predict a shipped class again that ``remove`` forgot on this device."""
    learner.restore_shipped(label)
    removed = set(learner.removed_shipped_classes())
    return {
        "restored_shipped_class": label,
        "shipped_classes": [c for c in shipped_classes(learner) if c not in removed],
        "classes": learner.counts(),
    }


def duplicate_note(learner: Learner, label: str, already: int) -> str:
    """What to do about images enrolled twice: next time skip them; to undo, start the class again, and for a
    shipped class say that ``remove`` also forgets the shipped class and how to bring it back."""
    note = (
        f"{already} image(s) were enrolled already and now count twice; rerun with --skip-duplicates to leave them out"
    )
    if label in shipped_classes(learner):
        return note + (
            f". To undo: remove --label {label} deletes its enrolled samples and also forgets the bundle's shipped "
            f"class {label!r}; restore --label {label} brings the shipped class back; then add with --skip-duplicates"
        )
    return note + f". To undo: remove --label {label} (deletes its enrolled samples), then add again"
