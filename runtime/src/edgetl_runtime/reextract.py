"""Features of enrolled samples for a model that has not seen them: from the images the state kept."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from edgetl_runtime.features import FeatureExtractor
from edgetl_runtime.images import hflip
from edgetl_runtime.state.image_policy import KeepMode
from edgetl_runtime.state.store import FeatureStore
from edgetl_runtime.warn import warn

Progress = Callable[[int, int], None]  # progress(done, total)


def reextract_missing(
    store: FeatureStore, extractor: FeatureExtractor, progress: Progress | None = None
) -> tuple[dict[str, int], dict[str, int]]:
    """Run the backbone on the kept images of samples the store's model has no features for, and store them.

    Each batch is stored as it is computed, so an interrupted load keeps its progress. Returns label ->
    number of samples that cannot be re-extracted: kept as features only (under another model), and kept
    as pixels that no longer decode (each named in a warning).
    """
    missing = store.images.samples_without_features()
    if not missing:
        return {}, {}
    todo = list(dict.fromkeys(key for _, _, key, kept in missing if kept))  # an image enrolled twice runs once
    _warn_upscaled(store.images.shrunk_sides(todo), extractor.spec.resize_size)
    done: set[str] = set()
    for start in range(0, len(todo), extractor.batch_size):  # batch by batch: thousands of thumbnails need not fit
        pixels = store.images.kept_pixels(todo[start : start + extractor.batch_size], skip_damaged=True)
        if pixels:
            features = extractor.run_backbone(list(pixels.values()))  # (B, D)
            store.images.add_model_features(dict(zip(pixels, features, strict=True)))
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
        warn(
            f"{count} kept thumbnail(s) have a shorter side of {', '.join(map(str, small))} px, but this model "
            f"resizes to {resize} px: their re-extracted features come from upscaled images. Fix: keep larger "
            f"thumbnails (keep_images={resize} or 'original') for future enrolments."
        )


def warn_images_still_kept(store: FeatureStore) -> None:
    """Asking for features only stops keeping new images; the ones already kept stay until forgotten."""
    requested = store.database.requested_policy
    if requested is not None and requested.mode is KeepMode.NONE:
        kept = store.storage()["images_kept"]
        if kept:
            warn(
                f"keep_images='none' keeps no new images, but {kept} image(s) enrolled earlier are still kept "
                "in this state. Fix: learner.forget_images() (edgetl-device forget-images) deletes them."
            )


def restore_unusable(
    store: FeatureStore,
    extractor: FeatureExtractor,
    images: list[npt.NDArray[np.uint8]],
    labels: list[str],
    keys: list[str],
    flip: bool,
) -> tuple[list[npt.NDArray[np.uint8]], list[str], list[str], list[int]]:
    """Enrolling again, under the same label, an image whose sample this model cannot use (kept as features
    only under another model) restores that sample instead of adding a second one: it gains this model's
    features and its image. Returns the images, labels and image hashes still to enrol, and the restored
    sample ids."""
    found = store.images.unusable_samples(keys)
    restore = [i for i, key in enumerate(keys) if key in found and labels[i] in found[key][2]]
    if not restore:
        return images, labels, keys, []
    pairs = [(images[i], keys[i]) for i in restore]
    if flip:  # each restored image's mirror was enrolled with it: restore it too when it is there
        mirrors = [hflip(images[i]) for i in restore]
        mirror_keys = extractor.keys(mirrors)
        found.update(store.images.unusable_samples(mirror_keys))
        pairs += [(m, k) for m, k in zip(mirrors, mirror_keys, strict=True) if k in found]
    pixels = [img for img, _ in pairs]
    store.images.restore_samples([found[k][0] for _, k in pairs], extractor.run_backbone(pixels), pixels)
    ids = sorted({i for _, k in pairs for i in found[k][1]})
    left = [i for i in range(len(images)) if i not in set(restore)]
    return [images[i] for i in left], [labels[i] for i in left], [keys[i] for i in left], ids


class FeatureCompletion:
    """Computes this model's missing features of enrolled samples before each fit, and warns once per new loss.

    Samples kept as features only under another model cannot be re-extracted: they are left out of the
    head and reported (by label) as unavailable.
    """

    def __init__(self, store: FeatureStore, extractor: FeatureExtractor, precision: str) -> None:
        self.store, self.extractor, self.precision = store, extractor, precision
        self.progress: Progress | None = None
        self.unavailable: dict[str, int] = {}  # label -> samples this model cannot use (features only, damaged)
        self._warned: dict[str, int] = {}

    def __call__(self) -> dict[str, int]:
        lost, damaged = reextract_missing(self.store, self.extractor, self.progress)  # damaged: warned already
        if any(n > self._warned.get(label, 0) for label, n in lost.items()):  # new ones only
            self._warned = lost
            warn(
                f"{sum(lost.values())} enrolled sample(s) {lost} were kept as features only (keep_images='none', or "
                f"enrolled before edgetl kept images) under another model, so this {self.precision} model cannot "
                "use them: they are left out of the head. Fix: load the precision (and bundle) they were enrolled "
                "with, or enrol those images again."
            )
        self.unavailable = {label: lost.get(label, 0) + damaged.get(label, 0) for label in {*lost, *damaged}}
        return self.unavailable
