"""Images -> backbone features, through the cache: an image seen before never re-runs the backbone."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from edgetl_runtime.backends.base import Backend
from edgetl_runtime.images import Images, as_image_list, image_digest
from edgetl_runtime.preprocess import PreprocessSpec, preprocess_batch, preprocess_key
from edgetl_runtime.state.store import FeatureStore

__all__ = ["FeatureExtractor", "preprocess_key"]


@dataclass
class FeatureExtractor:
    """Preprocess (numpy) + backend + feature cache. Safe to call from several threads."""

    spec: PreprocessSpec
    backend: Backend
    store: FeatureStore
    batch_size: int = 32
    backbone_runs: int = 0  # images the backbone actually ran on: cache misses
    cached_rows: int = 0  # features this extractor wrote to the prediction cache (the images a device has seen)
    _count_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def keys(self, images: list[npt.NDArray[np.uint8]]) -> list[str]:
        """Image hashes: the cache finds an image's features for the store's current model by them."""
        return [image_digest(img) for img in images]

    def __call__(self, images: Images) -> npt.NDArray[np.float32]:
        """``(N, D)`` float32 features, from the cache where possible."""
        return self.extract(as_image_list(images))[1]

    def extract(
        self, images: list[npt.NDArray[np.uint8]], keys: list[str] | None = None, *, cache: bool = True
    ) -> tuple[list[str], npt.NDArray[np.float32]]:
        """Image hashes (``keys`` when the caller hashed them already) and features for validated images.

        With ``cache`` what had to be computed is cached (a prediction); without, the caller writes it
        (an enrolment, whose transaction stores the features once).
        """
        keys = self.keys(images) if keys is None else keys
        cached = self.store.get_features(keys)
        missing = [i for i, k in enumerate(keys) if k not in cached]
        computed = self.run_backbone([images[i] for i in missing]) if missing else None
        if (
            computed is not None
            and cache
            and self.store.put_features({keys[i]: computed[j] for j, i in enumerate(missing)})
        ):
            with self._count_lock:
                self.cached_rows += len(missing)
        out = np.empty((len(images), self.store.feature_dim), dtype=np.float32)  # (N, D)
        for i, key in enumerate(keys):
            if key in cached:
                out[i] = cached[key]
        if computed is not None:
            out[missing] = computed
        return keys, out

    def run_backbone(self, images: list[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        """Always run the backbone (no cache), in batches.

        Sequential on purpose: preprocessing the next batch in a thread while onnxruntime runs this
        one is slower on a small device: the threads fight for the cores onnxruntime already uses.
        """
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = preprocess_batch(images[start : start + self.batch_size], self.spec)  # (B, 3, H, W)
            chunks.append(self.backend.run(batch))
        with self._count_lock:
            self.backbone_runs += len(images)
        return np.concatenate(chunks, axis=0)
