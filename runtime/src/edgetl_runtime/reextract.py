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
) -> tuple[dict[str, int], dict[str, int]]:
    """Run the backbone on the kept images of samples the store's model has no features for, and store them.

    Each batch is stored as it is computed, so an interrupted load keeps its progress. Returns label ->
    number of samples that cannot be re-extracted: kept as features only (under another model), and kept
    as pixels that no longer decode (each named in a warning).
    """
    missing = store.samples_without_features()
    if not missing:
        return {}, {}
    todo = list(dict.fromkeys(key for _, _, key, kept in missing if kept))  # an image enrolled twice runs once
    _warn_upscaled(store.shrunk_sides(todo), extractor.spec.resize_size)
    done: set[str] = set()
    for start in range(0, len(todo), extractor.batch_size):  # batch by batch: thousands of thumbnails need not fit
        pixels = store.kept_pixels(todo[start : start + extractor.batch_size], skip_damaged=True)
        if pixels:
            features = extractor.run_backbone(list(pixels.values()))  # (B, D)
            store.add_model_features(dict(zip(pixels, features, strict=True)))
            done.update(pixels)
        if progress is not None:
            progress(min(start + extractor.batch_size, len(todo)), len(todo))
    features_only: dict[str, int] = {}
    damaged: dict[str, int] = {}
    for _, label, key, kept in missing:
        if key not in done:
            counts = damaged if kept else features_only
            counts[label] = counts.get(label, 0) + 1
    return features_only, damaged


def _warn_upscaled(shrunk: dict[str, int], resize: int) -> None:
    """A thumbnail smaller than what this model resizes to is upscaled: its features lose detail."""
    small = sorted({side for side in shrunk.values() if side < resize})
    if small:
        count = sum(side < resize for side in shrunk.values())
        warnings.warn(
            f"{count} kept thumbnail(s) have a shorter side of {', '.join(map(str, small))} px, but this model "
            f"resizes to {resize} px: their re-extracted features come from upscaled images. Fix: keep larger "
            f"thumbnails (keep_images={resize} or 'original') for future enrolments.",
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
