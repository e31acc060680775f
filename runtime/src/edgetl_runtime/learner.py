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
    there is one source of truth. An ``add`` updates a current head incrementally (``partial_fit``:
    running class sums, rank-one ridge updates) instead of refitting; ``remove`` marks it stale.

    Threads: backbone runs and cache look-ups happen outside any lock; every use of the head (fit,
    partial_fit, predict) holds one lock, so ``predict`` from several threads while another adds
    never sees a half-updated head, and an add committed during a refit is never lost.
    """

    def __init__(
        self, bundle: Bundle, backend: Backend, store: FeatureStore, head: str = "auto", flip_enrolment: bool = False
    ) -> None:
        self.bundle = bundle
        self.backend = backend
        self.store = store
        self.head_kind = head
        self.flip_enrolment = flip_enrolment
        self.extractor = FeatureExtractor(bundle.manifest.preprocess, backend, store)
        create_head(head)  # refuse an unknown head name now, not at the first prediction after enrolling
        # The head is published with the change count it reflects; both only change under _head_lock.
        self._changes = 0  # bumped with every committed add/remove
        self._fitted: tuple[int, BaseHead | AutoHead] | None = None
        self._head_lock = threading.RLock()

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
        flip_enrolment: bool = False,
    ) -> Learner:
        """Open a bundle (verifying it), build and golden-check a backend, open or create the state.

        Args:
            bundle: the ``.edgetl`` file (or an opened :class:`Bundle`).
            state: SQLite file for enrolled samples; ``None`` keeps them in memory.
            backend: ``auto``, ``onnxruntime`` or ``tensorrt``.
            precision: ``best`` (int8 > fp16 > fp32), or one of them.
            threads: intra-op threads for onnxruntime (``None``: its default).
            head: ``auto``, or a head kind from :func:`edgetl_runtime.heads.create_head`.
            flip_enrolment: also enrol the mirror image of each sample (costs a second backbone run;
                measured +0.2-0.4 points at K >= 5 on Fashion-MNIST, -0.5 at K = 1).
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
        keys, features = self.extractor.extract(batch)  # the slow part: outside the head lock
        with self._head_lock:
            ids = self.store.add_samples(keys, names, features)
            fitted, self._changes = self._fitted, self._changes + 1
            if fitted is not None and fitted[0] == self._changes - 1:  # current head: update it in place
                fitted[1].partial_fit(features, np.asarray(names))
                self._fitted = (self._changes, fitted[1])
        return ids

    def remove(self, *, label: str | None = None, ids: Sequence[int] | None = None) -> int:
        """Forget a class or specific samples; the head is refit on the next prediction."""
        with self._head_lock:
            removed = self.store.remove(label=label, ids=ids)
            self._changes += 1
        return removed

    # ---------------------------------------------------------------- fitting and prediction

    def fit(self) -> Learner:
        """Refit the head from every enrolled sample (milliseconds: features come from the cache).

        A full fit also re-runs model selection (``auto``), which incremental adds keep fixed.
        """
        with self._head_lock:
            _, labels, features = self.store.samples()  # (N,), (N, D)
            if len(labels) == 0:
                raise NotFittedError("No samples are enrolled; call add(images, label) for at least one class first.")
            self._fitted = (self._changes, create_head(self.head_kind).fit(features, labels))
        return self

    def _current_head(self) -> BaseHead | AutoHead:
        """The head reflecting every committed change; call with ``_head_lock`` held."""
        if self._fitted is None or self._fitted[0] != self._changes:
            self.fit()  # threads queued on the lock behind this refit find it current and reuse it
        assert self._fitted is not None
        return self._fitted[1]

    @property
    def head(self) -> BaseHead | AutoHead:
        """The fitted head (refit first if samples changed since the last fit)."""
        with self._head_lock:
            return self._current_head()

    @property
    def classes_(self) -> npt.NDArray[np.str_]:
        with self._head_lock:
            return np.asarray(self._current_head().classes_, dtype=str)

    def features(self, images: Images) -> npt.NDArray[np.float32]:
        """Backbone features ``(N, D)`` of ``images`` (cached)."""
        return self.extractor(images)

    def predict(self, images: Images, *, reject: bool = False) -> npt.NDArray[np.str_]:
        """Labels for ``images``; with ``reject`` low-confidence ones become ``"unknown"``."""
        features = self.features(images)
        with self._head_lock:
            return np.asarray(self._current_head().predict(features, reject=reject), dtype=str)

    def predict_proba(self, images: Images) -> npt.NDArray[np.float64]:
        """Class probabilities ``(N, C)``, columns in ``classes_`` order."""
        features = self.features(images)
        with self._head_lock:
            return np.asarray(self._current_head().predict_proba(features), dtype=np.float64)

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
