"""The device-side few-shot learner: one bundle, a persistent enrolment state, a head refit in milliseconds."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime.arguments import check_class_count, check_labels, check_threads
from edgetl_runtime.backends.base import Backend
from edgetl_runtime.backends.selection import Selection
from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.bundle.shipped_head import read_prior
from edgetl_runtime.errors import NotFittedError
from edgetl_runtime.features import FeatureExtractor
from edgetl_runtime.head_keeper import Head, HeadKeeper
from edgetl_runtime.heads import Prior
from edgetl_runtime.images import Images, as_image_list, hflip
from edgetl_runtime.learner_info import Enrolled, accuracy_report
from edgetl_runtime.loading import open_backend_and_state
from edgetl_runtime.reextract import FeatureCompletion, Progress, restore_unusable, warn_images_still_kept
from edgetl_runtime.state.image_policy import ImageKeeping
from edgetl_runtime.state.store import FeatureStore
from edgetl_runtime.versions import runtime_versions

if TYPE_CHECKING:
    from edgetl_runtime.enrolment import Enrolment

__all__ = ["Enrolled", "Learner"]


class Learner:
    """Enrol labelled images, fit a head on their cached features, predict: the device API, a facade.

    The SQLite state (:mod:`edgetl_runtime.state`) holds samples and features; the head is derived from
    it and kept current across threads and processes by a :class:`~edgetl_runtime.head_keeper.HeadKeeper`.
    A bundle's shipped head is the prior every fit starts from: its classes are predicted with nothing
    enrolled, enrolments extend them, ``remove(label=...)`` forgets a shipped class, ``restore_shipped`` undoes it.
    """

    def __init__(
        self,
        bundle: Bundle,
        backend: Backend,
        store: FeatureStore,
        head: str = "adaptive",
        flip_enrolment: bool = False,
        selection: Selection | None = None,
        prior: Prior | None = None,
    ) -> None:
        self.bundle = bundle
        self.backend = backend
        self.selection = selection  # why this backend/precision/kernel (None when built by the caller)
        self.store = store
        self.head_kind = head
        self.flip_enrolment = flip_enrolment
        self.extractor = FeatureExtractor(bundle.manifest.preprocess, backend, store)
        self.prior = prior  # the bundle's shipped head (None: none, or shipped_head=False)
        self._complete = FeatureCompletion(store, self.extractor, backend.precision.value)
        self.keeper = HeadKeeper(store, head, prior, self._complete)

    @property
    def unavailable(self) -> dict[str, int]:
        """Label -> enrolled samples this model cannot use (kept as features only elsewhere, or damaged)."""
        return self._complete.unavailable

    @classmethod
    def load(
        cls,
        bundle: str | os.PathLike[str] | Bundle,
        state: str | os.PathLike[str] | None = None,
        *,
        backend: str = "auto",
        precision: str = "best",
        threads: int | None = None,
        head: str = "adaptive",
        flip_enrolment: bool = False,
        measure: bool = True,
        shipped_head: bool = True,
        keep_images: ImageKeeping | str | int | None = None,
        progress: Progress | None = None,
    ) -> Learner:
        """Open a bundle (verifying it), build and golden-check a backend, open or create the state.

        ``state``: the SQLite file (None: in memory). ``backend``: ``auto``, ``onnxruntime``, ``tensorrt``.
        ``precision``: ``best`` (the fastest that passes the golden check here, timed once and cached;
        ``measure=False`` skips the timing) or ``int8`` / ``fp16`` / ``fp32``. ``head``: ``adaptive`` (``auto``
        adapted to the images predicted so far, where that passes its guard), ``auto`` (labelled samples only) or a
        kind of :func:`~edgetl_runtime.heads.create_head`. ``flip_enrolment``: also enrol each mirror image.
        ``keep_images``: what the state keeps of each image so another model can re-extract it (see
        :class:`~edgetl_runtime.state.image_policy.ImageKeeping`; None: the state's own policy).
        ``progress(done, total)`` reports re-extraction for this model (docs/state.md).
        """
        threads = check_threads(threads)
        opened = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        prior = read_prior(opened) if shipped_head else None  # before the backend: a bad head fails fast
        built, selection, store = open_backend_and_state(
            opened, state, backend, precision, threads, measure, keep_images
        )
        try:
            learner = cls(opened, built, store, head, flip_enrolment, selection, prior)
            learner._complete.progress = progress
            warn_images_still_kept(store)
            if len(store) or learner.keeper.prior_now() is not None:
                learner._fit_at_load()
        except BaseException:
            store.close()  # a refused load must not leave the database open (and its -wal file behind)
            raise
        return learner

    def already_enrolled(self, images: Images) -> dict[int, list[str]]:
        """Index -> labels of each image (pixels, not file name) that is enrolled already or earlier in ``images``."""
        return self.store.duplicates(self.extractor.keys(as_image_list(images)))

    def add(self, images: Images, labels: Sequence[Any] | str, *, skip_duplicates: bool = False) -> list[int]:
        """Enrol images with their labels in one transaction; returns the sample ids (see :meth:`enrol`)."""
        return self.enrol(images, labels, skip_duplicates=skip_duplicates, stacklevel=3).ids

    def enrol(
        self, images: Images, labels: Sequence[Any] | str, *, skip_duplicates: bool = False, stacklevel: int = 2
    ) -> Enrolled:
        """Enrol images with their labels in one transaction (each hashed once, its features written once).

        An image enrolled already would count twice: ``skip_duplicates`` leaves it out, otherwise it is enrolled
        again with a warning. An image whose sample this model cannot use (features only, under another model)
        restores that sample under the same label instead of adding a second one."""
        batch = as_image_list(images)
        names = check_labels(labels, len(batch))  # refused, never str()-converted: see arguments.LABEL_RULE
        if not self.keeper.knows(names):  # a new class: count them before anything is stored
            check_class_count(self.store.counts(), names)
        keys = self.extractor.keys(batch)  # hashed once: a phone photo takes milliseconds
        with self.keeper.lock:
            batch, names, keys, restored = restore_unusable(
                self.store, self.extractor, batch, names, keys, self.flip_enrolment
            )
            if restored:
                self.keeper.changed()  # those samples join the head at the next fit
        dupes = self.store.duplicates(keys) if batch else {}
        counted = self.keeper.already_counted(keys, names)  # the shipped head was fitted on (or merged) them
        dupes.update({int(i): [names[i]] for i in np.flatnonzero(counted) if int(i) not in dupes})
        by_head = int(counted.sum())
        if dupes and skip_duplicates:
            keep = [i for i in range(len(batch)) if i not in dupes]
            batch, names, keys = [batch[i] for i in keep], [names[i] for i in keep], [keys[i] for i in keep]
            counted = counted[keep]
        elif set(dupes) - set(np.flatnonzero(counted).tolist()):  # those counted by the head stay out of it
            warnings.warn(
                f"{len(dupes)} of {len(batch)} image(s) are enrolled already; they were enrolled again and count "
                "twice. Fix: pass skip_duplicates=True (edgetl-device add --skip-duplicates), or remove them.",
                stacklevel=stacklevel,
            )
        if not batch:
            return Enrolled(restored, 0, len(restored), len(dupes), by_head)
        if self.flip_enrolment:
            mirrors = [hflip(img) for img in batch]
            mirror_keys = self.extractor.keys(mirrors)
            counted = np.concatenate([counted, self.keeper.already_counted(mirror_keys, names)])
            batch, names, keys = batch + mirrors, names + names, keys + mirror_keys
        features = self.extractor.extract(batch, keys, cache=False)[1]  # the slow part: outside the head lock
        ids = self.keeper.commit_added(
            partial(self.store.add_samples, keys, names, features, batch), names, features, ~counted
        )
        return Enrolled(restored + ids, len(ids), len(restored), len(dupes), by_head)

    def remove(
        self, *, label: str | None = None, ids: Sequence[int] | npt.NDArray[np.integer[Any]] | None = None
    ) -> int:
        """Forget a class (enrolled or shipped) or samples by id; returns how many enrolled samples went."""
        shipped = [] if self.prior is None else [str(c) for c in self.prior.classes]
        with self.keeper.lock:
            removed = self.store.remove(label=label, ids=ids, shipped=shipped)
            self.keeper.changed()
        return removed

    def export_enrolment(
        self, path: str | os.PathLike[str], *, images: Sequence[str | os.PathLike[str]] | None = None
    ) -> Enrolment:
        """Write every enrolled sample (features, labels, keys) to one verified file for ``edgetl merge`` (see
        :func:`~edgetl_runtime.enrolment.export_samples`); only ``images`` whose pixels match a sample leave."""
        from edgetl_runtime.enrolment import export_samples
        from edgetl_runtime.outputs import check_output

        check_output(path, [self.bundle.path, self.store.path, *(images or [])], force=True)  # never an input
        with self.keeper.lock:
            self._complete()
        manifest, precision = self.bundle.manifest, self.backend.precision
        return export_samples(self.store, self.extractor, manifest, precision, path, images, runtime_versions())

    def forget_images(self) -> int:
        """Delete every kept image, keep features only from now on; returns how many (no re-extraction then)."""
        with self.keeper.lock:
            return self.store.forget_images()

    def fit(self) -> Learner:
        """Refit the head from every enrolled sample and the seen images (from the cache); re-runs ``auto``'s choice."""
        self.keeper.fit()
        return self

    def _fit_at_load(self) -> None:
        """Fit now; a state whose every sample this model cannot use still opens (predict says why)."""
        try:
            self.fit()
        except NotFittedError:
            if not self.unavailable:
                raise

    @property
    def head(self) -> Head:
        """The fitted head (refit first if samples changed since the last fit, in any process)."""
        return self.keeper.current()

    @property
    def classes_(self) -> npt.NDArray[np.str_]:
        return np.asarray(self.head.classes_, dtype=str)

    def features(self, images: Images) -> npt.NDArray[np.float32]:
        """Backbone features ``(N, D)`` of ``images`` (cached: the default head learns from them)."""
        return np.asarray(self._seen(images, None))

    def predict(self, images: Images, *, reject: bool = False) -> npt.NDArray[np.str_]:
        """Labels for ``images``; with ``reject`` low-confidence ones become ``"unknown"``."""
        return np.asarray(self._seen(images, lambda head, z: head.predict(z, reject=reject)), dtype=str)

    def predict_proba(self, images: Images) -> npt.NDArray[np.float64]:
        """Class probabilities ``(N, C)``, columns in ``classes_`` order."""
        return np.asarray(self._seen(images, lambda head, z: head.predict_proba(z)), dtype=np.float64)

    def _seen(self, images: Images, use: Callable[[Head, Any], Any] | None) -> Any:
        """``use(head, features)`` by the head as it stands, then the newly cached images count as seen toward its
        next re-adaptation (``head="adaptive"``): the head predicting an image was fitted before it was seen."""
        before = self.extractor.cached_rows
        out = features = self.extractor(images)
        if use is not None:
            with self.keeper.lock:
                out = use(self.keeper.current(), features)
        self.keeper.saw(self.extractor.cached_rows - before)
        return out

    def evaluate(self, images: Images, labels: Sequence[Any]) -> dict[str, Any]:
        """Accuracy and per-class recall on labelled images (not cached as seen: no head adapts to a test set)."""
        features = self.extractor.extract(as_image_list(images), cache=False)[1]
        with self.keeper.lock:
            return accuracy_report(np.asarray(self.keeper.current().predict(features), dtype=str), labels)

    def counts(self) -> dict[str, int]:
        """Enrolled samples per label (shipped classes are in ``info()["shipped_head"]``)."""
        return self.store.counts()

    def storage(self) -> dict[str, Any]:
        """What the state file holds: bytes, kept images, samples with features per model."""
        return self.store.storage()

    def removed_shipped_classes(self) -> list[str]:
        """Shipped classes this device removed (they stay removed across reloads)."""
        return self.store.removed_shipped_labels()

    def restore_shipped(self, label: str) -> None:
        """Predict a shipped class again that ``remove(label=...)`` forgot (its enrolled samples stay deleted)."""
        with self.keeper.lock:
            self.store.restore_shipped(label)
            self.keeper.changed()

    def __len__(self) -> int:
        """Enrolled samples."""
        return len(self.store)

    def backbone(self, images: Images) -> npt.NDArray[np.float32]:
        """Backbone features ``(N, D)`` of ``images``, always computed (never cached): what ``bench`` times."""
        return self.extractor.run_backbone(as_image_list(images))

    @property
    def backbone_runs(self) -> int:
        """Images the backbone actually ran on since load (cache misses and re-extractions)."""
        return self.extractor.backbone_runs

    def checkpoint(self) -> bool:
        """Fold the write-ahead log into the state file (False: a reader kept part). Every add is durable already."""
        return self.store.checkpoint()

    save = checkpoint  # the former name: it never saved anything an add had not already made durable

    def info(self) -> dict[str, Any]:
        """The bundle, the backend and why it was chosen, the state and the head, as one JSON-able dict."""
        from edgetl_runtime.learner_info import learner_info

        return learner_info(self)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Learner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
