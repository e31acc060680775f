"""Features of enrolled samples for a model that has not seen them: from the images the state kept."""

from __future__ import annotations

import warnings
from collections.abc import Callable

from edgetl_runtime.cache import FeatureStore
from edgetl_runtime.features import FeatureExtractor
from edgetl_runtime.kept_images import KeepMode

Progress = Callable[[int, int], None]  # progress(done, total)


def reextract_missing(
    store: FeatureStore, extractor: FeatureExtractor, progress: Progress | None = None
) -> dict[str, int]:
    """Run the backbone on the kept images of samples the store's model has no features for, and store them.

    Each batch is stored as it is computed, so an interrupted load keeps its progress. Returns label ->
    number of samples that cannot be re-extracted (kept as features only, under another model).
    """
    missing = store.samples_without_features()
    if not missing:
        return {}
    todo = list(dict.fromkeys(key for _, _, key, kept in missing if kept))  # an image enrolled twice runs once
    done: set[str] = set()
    short_sides: list[int] = []
    for start in range(0, len(todo), extractor.batch_size):  # batch by batch: thousands of thumbnails need not fit
        pixels = store.kept_pixels(todo[start : start + extractor.batch_size], skip_damaged=True)
        short_sides += [min(p.shape[:2]) for p in pixels.values()]
        if pixels:
            features = extractor.run_backbone(list(pixels.values()))  # (B, D)
            store.add_model_features(dict(zip(pixels, features, strict=True)))
            done.update(pixels)
        if progress is not None:
            progress(min(start + extractor.batch_size, len(todo)), len(todo))
    _warn_upscaled(store, extractor, short_sides)
    lost: dict[str, int] = {}
    for _, label, key, _ in missing:
        if key not in done:
            lost[label] = lost.get(label, 0) + 1
    return lost


def _warn_upscaled(store: FeatureStore, extractor: FeatureExtractor, short_sides: list[int]) -> None:
    """A thumbnail smaller than what this model resizes to is upscaled: its features lose detail."""
    policy, resize = store.image_policy, extractor.spec.resize_size
    shrunk = [side for side in short_sides if side == policy.size]  # thumbnails made smaller than the original
    if shrunk and policy.size < resize:
        warnings.warn(
            f"{len(shrunk)} kept thumbnail(s) have a shorter side of {policy.size} px, but this model resizes to "
            f"{resize} px: their re-extracted features come from upscaled images. Fix: keep larger thumbnails "
            f"(keep_images={resize} or 'original') for future enrolments.",
            stacklevel=4,
        )


def warn_images_still_kept(store: FeatureStore) -> None:
    """Asking for features only stops keeping new images; the ones already kept stay until forgotten."""
    if store.requested_policy is not None and store.requested_policy.mode is KeepMode.NONE:
        kept = store.storage()["images_kept"]
        if kept:
            warnings.warn(
                f"keep_images='none' keeps no new images, but {kept} image(s) enrolled earlier are still kept "
                "in this state. Fix: learner.forget_images() (edgetl-device forget-images) deletes them.",
                stacklevel=3,
            )
