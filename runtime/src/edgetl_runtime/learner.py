"""The device-side few-shot learner: one bundle, a persistent enrolment state, a head refit in milliseconds."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime.backends.base import Backend, create_backend
from edgetl_runtime.bundle import Bundle
from edgetl_runtime.cache import FeatureStore
from edgetl_runtime.errors import InputError, NotFittedError
from edgetl_runtime.features import FeatureExtractor, preprocess_key
from edgetl_runtime.heads import AutoHead, BaseHead, create_head
from edgetl_runtime.images import Images, as_image_list, hflip


class Learner:
    """Enrol labelled images, fit a head on their cached features, predict.

    The SQLite state holds samples and features; the head is derived from it and refit on load, so
    there is one source of truth. ``predict`` may run in several threads while another thread adds:
    a fit swaps in a new head object, never mutates the one predictions are using.
    """

    def __init__(
        self, bundle: Bundle, backend: Backend, store: FeatureStore, head: str = "auto", flip_enrolment: bool = True
    ) -> None:
        self.bundle = bundle
        self.backend = backend
        self.store = store
        self.head_kind = head
        self.flip_enrolment = flip_enrolment
        self.extractor = FeatureExtractor(bundle.manifest.preprocess, backend, store)
        create_head(head)  # refuse an unknown head name now, not at the first prediction after enrolling
        # The head is published with the change count it was fitted at. A bare "stale" flag loses updates:
        # a refit that read the samples before an add committed would clear the flag that add had just set.
        self._changes = 0  # bumped after every committed add/remove
        self._fitted: tuple[int, BaseHead | AutoHead] | None = None
        self._fit_lock = threading.Lock()
        self._change_lock = threading.Lock()

    @classmethod
    def load(
        cls,
        bundle: str | os.PathLike[str] | Bundle,
        state: str | os.PathLike[str] | None = None,
        *,
        backend: str = "auto",
        precision: str = "best",
        threads: int | None = None,
        head: str = "auto",
        flip_enrolment: bool = True,
    ) -> Learner:
        """Open a bundle (verifying it), build and golden-check a backend, open or create the state.

        Args:
            bundle: the ``.edgetl`` file (or an opened :class:`Bundle`).
            state: SQLite file for enrolled samples; ``None`` keeps them in memory.
            backend: ``auto``, ``onnxruntime`` or ``tensorrt``.
            precision: ``best`` (int8 > fp16 > fp32), or one of them.
            threads: intra-op threads for onnxruntime (``None``: its default).
            head: ``auto``, or a head kind from :func:`edgetl_runtime.heads.create_head`.
            flip_enrolment: also enrol the mirror image of each sample (better few-shot accuracy).
        """
        opened = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        built = create_backend(opened, backend, precision, threads)
        digest = opened.manifest.model_digest(built.precision)
        store = FeatureStore(
            None if state is None else Path(state),
            bundle_digest=digest,
            feature_dim=opened.manifest.backbone.feature_dim,
            preprocess_key=preprocess_key(opened.manifest.preprocess),
        )
        try:
            learner = cls(opened, built, store, head, flip_enrolment)
            if len(store):
                learner.fit()
        except BaseException:
            store.close()  # a refused load must not leave the database open (and its -wal file behind)
            raise
        return learner

    # ---------------------------------------------------------------- enrolment

    def add(self, images: Images, labels: Sequence[Any] | str) -> list[int]:
        """Enrol images with their labels in one transaction; returns the new sample ids."""
        batch = as_image_list(images)
        if isinstance(labels, str):
            names = [labels] * len(batch)
        elif isinstance(labels, (Sequence, np.ndarray)) and not isinstance(labels, (bytes, bytearray)):
            names = [str(v) for v in labels]
        else:
            raise InputError(f"Labels must be a str or a list of str, got {type(labels).__name__}.")
        if len(names) != len(batch):
            raise InputError(f"Got {len(batch)} images but {len(names)} labels; pass one label per image, or one str.")
        if any(not name for name in names):
            raise InputError("Labels must be non-empty strings.")
        if self.flip_enrolment:
            batch, names = batch + [hflip(img) for img in batch], names + names
        keys, features = self.extractor.extract(batch)
        ids = self.store.add_samples(keys, names, features)
        self._changed()
        return ids

    def remove(self, *, label: str | None = None, ids: Sequence[int] | None = None) -> int:
        """Forget a class or specific samples; the head is refit on the next prediction."""
        removed = self.store.remove(label=label, ids=ids)
        self._changed()
        return removed

    def _changed(self) -> None:
        with self._change_lock:
            self._changes += 1

    # ---------------------------------------------------------------- fitting and prediction

    def fit(self) -> Learner:
        """Refit the head from every enrolled sample (milliseconds: features come from the cache)."""
        with self._fit_lock:
            return self._fit_locked()

    def _fit_locked(self) -> Learner:
        seen = self._changes  # read BEFORE the samples: a change committed after this leaves the head stale
        _, labels, features = self.store.samples()  # (N,), (N, D)
        if len(labels) == 0:
            raise NotFittedError("No samples are enrolled; call add(images, label) for at least one class first.")
        self._fitted = (seen, create_head(self.head_kind).fit(features, labels))
        return self

    def _current_head(self) -> BaseHead | AutoHead:
        fitted = self._fitted  # one read: the count and the head always belong together
        if fitted is None or fitted[0] != self._changes:
            with self._fit_lock:
                fitted = self._fitted  # threads that queued here behind one refit reuse its head
                if fitted is None or fitted[0] != self._changes:
                    self._fit_locked()
                    fitted = self._fitted
        assert fitted is not None
        return fitted[1]

    @property
    def head(self) -> BaseHead | AutoHead:
        """The fitted head (refit first if samples changed since the last fit)."""
        return self._current_head()

    @property
    def classes_(self) -> npt.NDArray[np.str_]:
        return np.asarray(self._current_head().classes_, dtype=str)

    def features(self, images: Images) -> npt.NDArray[np.float32]:
        """Backbone features ``(N, D)`` of ``images`` (cached)."""
        return self.extractor(images)

    def predict(self, images: Images, *, reject: bool = False) -> npt.NDArray[np.str_]:
        """Labels for ``images``; with ``reject`` low-confidence ones become ``"unknown"``."""
        head = self._current_head()
        return np.asarray(head.predict(self.features(images), reject=reject), dtype=str)

    def predict_proba(self, images: Images) -> npt.NDArray[np.float64]:
        """Class probabilities ``(N, C)``, columns in ``classes_`` order."""
        return np.asarray(self._current_head().predict_proba(self.features(images)), dtype=np.float64)

    def evaluate(self, images: Images, labels: Sequence[Any]) -> dict[str, Any]:
        """Accuracy and per-class recall on labelled images."""
        truth = np.asarray([str(v) for v in labels])
        predicted = self.predict(images)
        if len(truth) != len(predicted):
            raise InputError(f"Got {len(predicted)} images but {len(truth)} labels; they must match one to one.")
        per_class = {c: float(np.mean(predicted[truth == c] == c)) for c in np.unique(truth)}
        return {"accuracy": float(np.mean(predicted == truth)), "n": len(truth), "per_class_recall": per_class}

    # ---------------------------------------------------------------- state

    def save(self) -> None:
        """Checkpoint the write-ahead log. Every ``add`` is already durable when it returns."""
        self.store.checkpoint()

    def info(self) -> dict[str, Any]:
        m = self.bundle.manifest
        return {
            "bundle": str(self.bundle.path),
            "backbone": m.backbone.name,
            "feature_dim": m.backbone.feature_dim,
            "precisions": [p.value for p in m.precisions],
            "backend": self.backend.name,
            "precision": self.backend.precision.value,
            "input_size": list(m.preprocess.input_size),
            "samples": len(self.store),
            "classes": self.store.counts(),
            "head": self.head_kind,
        }

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Learner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
