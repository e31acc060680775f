"""How a load opens its backend and its state, the state once: which precisions an existing state has features
for decides ``best``, so the state is opened (and checked, and upgraded) before the backend is chosen."""

from __future__ import annotations

import os

from edgetl_runtime.backends.base import Backend
from edgetl_runtime.backends.selection import Selection, select_backend
from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.state.image_policy import ImageKeeping
from edgetl_runtime.state.peek import ranked_precisions
from edgetl_runtime.state.store import FeatureStore

__all__ = ["open_backend_and_state"]


def open_backend_and_state(
    bundle: Bundle,
    state: str | os.PathLike[str] | None,
    backend: str,
    precision: str,
    threads: int | None,
    measure: bool,
    keep_images: ImageKeeping | str | int | None,
) -> tuple[Backend, Selection, FeatureStore]:
    """A load's backend and state, the state opened once: an existing state is opened (and upgraded) first,
    so the precisions it has features for decide ``best``, and the store then adopts the chosen model."""
    manifest, policy = bundle.manifest, None if keep_images is None else ImageKeeping.parse(keep_images)
    exists = state is not None and os.path.isfile(state)
    existing = FeatureStore.open_state(state, policy, manifest.known_models()) if exists else None
    try:
        keep = ranked_precisions(existing.feature_counts(), manifest) if existing else ()
        built, selection = select_backend(bundle, backend, precision, threads, measure=measure, keep=keep)
    except BaseException:
        if existing is not None:
            existing.connection.close()
        raise
    return built, selection, FeatureStore.for_bundle(state, manifest, built.precision, keep_images, opened=existing)
