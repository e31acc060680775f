"""The device-side few-shot learner: one bundle, a persistent enrolment state, a head refit in milliseconds."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime.arguments import check_labels, check_threads
from edgetl_runtime.backends.base import Backend
from edgetl_runtime.backends.selection import Selection, select_backend
from edgetl_runtime.blas import single_threaded_blas
from edgetl_runtime.bundle import Bundle
from edgetl_runtime.cache import FeatureStore
from edgetl_runtime.errors import InputError, NotFittedError
from edgetl_runtime.features import FeatureExtractor, preprocess_key
from edgetl_runtime.heads import AdaptiveHead, AutoHead, BaseHead, Prior, create_head, fit_with_prior, head_for_prior
from edgetl_runtime.images import Images, as_image_list, hflip
from edgetl_runtime.kept_images import ImageKeeping
from edgetl_runtime.reextract import Progress, reextract_missing, restore_unusable, warn_images_still_kept
from edgetl_runtime.shipped import read_prior
from edgetl_runtime.state_peek import state_precision
from edgetl_runtime.warn import warn

if TYPE_CHECKING:
    from edgetl_runtime.enrolment import Enrolment


class Learner:
    """Enrol labelled images, fit a head on their cached features, predict.

    The SQLite state holds samples and features; the head is derived from it and refit on load, so
    there is one source of truth. A bundle that ships a head (class statistics, see
    :mod:`edgetl_runtime.shipped`) is the prior every fit starts from: its classes are predicted with
    nothing enrolled, enrolments extend them, and ``remove(label=...)`` forgets a shipped class too
    (recorded in the state, so it stays forgotten after a reload). An ``add`` updates a current head
    incrementally (``partial_fit``: running class sums, rank-one ridge updates) instead of refitting;
    ``remove`` marks it stale.

    Threads: backbone runs and cache look-ups happen outside any lock; every use of the head (fit,
    partial_fit, predict) holds one lock, so ``predict`` from several threads while another adds
    never sees a half-updated head, and an add committed during a refit is never lost.
    """

    def __init__(
        self,
        bundle: Bundle,
        backend: Backend,
        store: FeatureStore,
        head: str = "auto",
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
        create_head(head)  # refuse an unknown head name now, not at the first prediction after enrolling
        if prior is not None:
            head_for_prior(head, prior)  # and a head that cannot continue a shipped one (logistic)
        # The head is published with the change count it reflects; both only change under _head_lock.
        self._changes = 0  # bumped with every committed add/remove
        self._fitted: tuple[int, BaseHead | AutoHead] | None = None
        self._head_lock = threading.RLock()
        # Another process may enrol into the same state file: its commits change data_version (ours do not).
        self._data_version = store.data_version()
        self._samples_token = (*store.samples_token(), len(store.removed_shipped_labels()))
        self.progress: Progress | None = None  # re-extraction progress, (done, total)
        self.unavailable: dict[str, int] = {}  # label -> samples this model cannot use (features only, damaged)
        self._warned_features_only: dict[str, int] = {}

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
        measure: bool = True,
        shipped_head: bool = True,
        keep_images: ImageKeeping | str | int | None = None,
        progress: Progress | None = None,
    ) -> Learner:
        """Open a bundle (verifying it), build and golden-check a backend, open or create the state.

        Args:
            bundle: the ``.edgetl`` file (or an opened :class:`Bundle`).
            state: SQLite file for enrolled samples; ``None`` keeps them in memory.
            backend: ``auto``, ``onnxruntime`` or ``tensorrt``.
            precision: ``best``: the fastest precision that passes the golden check on this device,
                timed briefly at the first load (cached per bundle, CPU and thread count); or one of
                ``int8``, ``fp16``, ``fp32``.
            threads: intra-op threads for onnxruntime (``None``: its default).
            head: ``auto``, or a head kind from :func:`edgetl_runtime.heads.create_head`; ``adaptive`` also learns from
                the features of the images predicted so far (the state's prediction cache), at every fit.
            flip_enrolment: also enrol the mirror image of each sample (costs a second backbone run;
                measured +0.2-0.4 points at K >= 5 on Fashion-MNIST, -0.5 at K = 1).
            measure: with ``best``, time the verified precisions (about 1.5 s, once per device); False
                picks int8 when its member was built for this CPU family, else fp32, untimed.
            shipped_head: start from the head the bundle ships, if any (False: enrolments only).
            keep_images: what the state keeps of each enrolled image so that another precision or a new
                bundle can re-extract it: ``"thumbnail"`` (384-px shorter side), a thumbnail size in pixels,
                ``"original"``, or ``"none"`` (features only, for privacy). None: the state's own policy
                (a new state: thumbnails). See :class:`~edgetl_runtime.kept_images.ImageKeeping`.
            progress: called as ``progress(done, total)`` while samples are re-extracted for this model.

        One state serves every precision of a bundle and every re-export of it: features are stored per
        model (backbone member digest + preprocessing), and a model the state has no features for computes
        them from the kept images at load, once. A bundle that only changes its shipped head (``edgetl
        merge``) keeps the same backbone members, so its enrolments need no backbone run at all.
        """
        threads = check_threads(threads)
        opened = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        prior = read_prior(opened) if shipped_head else None  # before the backend: a bad head fails fast
        keep = state_precision(state, opened.manifest) if state is not None else None
        built, selection = select_backend(opened, backend, precision, threads, measure=measure, keep=keep)
        manifest = opened.manifest
        store = FeatureStore(
            None if state is None else Path(state),
            model_digest=manifest.model_digest(built.precision),
            feature_dim=manifest.backbone.feature_dim,
            preprocess_key=preprocess_key(manifest.preprocess),
            precision=built.precision.value,
            backbone=manifest.backbone.name,
            keep_images=keep_images,
            known_models={manifest.model_digest(p): (p.value, manifest.backbone.name) for p in manifest.precisions},
        )
        try:
            learner = cls(opened, built, store, head, flip_enrolment, selection, prior)
            learner.progress = progress
            warn_images_still_kept(store)
            if len(store) or learner._prior_now() is not None:
                learner._fit_at_load()
        except BaseException:
            store.close()  # a refused load must not leave the database open (and its -wal file behind)
            raise
        return learner

    # ---------------------------------------------------------------- enrolment

    def already_enrolled(self, images: Images) -> dict[int, list[str]]:
        """Index -> labels of each image (pixels, not file name) that is enrolled already or earlier in ``images``."""
        return self._duplicates(self.extractor.keys(as_image_list(images)))

    def _duplicates(self, keys: list[str]) -> dict[int, list[str]]:
        found = self.store.enrolled_labels(keys)
        seen: set[str] = set()
        out: dict[int, list[str]] = {}
        for i, key in enumerate(keys):
            if key in found or key in seen:
                out[i] = found.get(key, [])
            seen.add(key)
        return out

    def add(self, images: Images, labels: Sequence[Any] | str, *, skip_duplicates: bool = False) -> list[int]:
        """Enrol images with their labels in one transaction; returns the new sample ids.

        An image enrolled already (same pixels) would count twice, in the head and in the rejection
        calibration: with ``skip_duplicates`` it is left out, otherwise it is enrolled again with a warning.
        An image whose sample this model cannot use (kept as features only under another precision or
        bundle) is not enrolled twice: under the same label, that sample gains this model's features and
        the image again, and its id is returned.
        """
        batch = as_image_list(images)
        names = check_labels(labels, len(batch))  # refused, never str()-converted: see arguments.LABEL_RULE
        keys = self.extractor.keys(batch)  # hashed once: a phone photo takes milliseconds
        with self._head_lock:
            batch, names, keys, restored = restore_unusable(
                self.store, self.extractor, batch, names, keys, self.flip_enrolment
            )
            self._changes += bool(restored)  # those samples join the head at the next fit
        if not batch:
            return restored
        dupes = self._duplicates(keys)
        if dupes and skip_duplicates:
            keep = [i for i in range(len(batch)) if i not in dupes]
            batch, names, keys = [batch[i] for i in keep], [names[i] for i in keep], [keys[i] for i in keep]
            if not batch:
                return restored
        elif dupes:
            warnings.warn(
                f"{len(dupes)} of {len(batch)} image(s) are enrolled already; they were enrolled again and count "
                "twice. Fix: pass skip_duplicates=True (edgetl-device add --skip-duplicates), or remove them.",
                stacklevel=2,
            )
        if self.flip_enrolment:
            mirrors = [hflip(img) for img in batch]
            batch, names, keys = batch + mirrors, names + names, keys + self.extractor.keys(mirrors)
        features = self.extractor.extract(batch, keys)[1]  # the slow part: outside the head lock
        with self._head_lock:
            self._sync_external()  # another process's enrolment since the last fit: refit, do not update
            ids = self.store.add_samples(keys, names, features, images=batch)
            fitted, self._changes = self._fitted, self._changes + 1
            if fitted is not None and fitted[0] == self._changes - 1:  # current head: update it in place
                fresh = ~self._already_counted(keys)
                if fresh.any():
                    # Small products: OpenBLAS threads spinning on a busy 2-core device made this p50 3.5 ms with
                    # 120 ms outliers; on one thread, 1.7 ms and 7 ms at worst (benchmarks/bench_fleet.py).
                    with single_threaded_blas():
                        fitted[1].partial_fit(features[fresh], np.asarray(names)[fresh])
                self._fitted = (self._changes, fitted[1])
        return restored + ids

    def remove(
        self, *, label: str | None = None, ids: Sequence[int] | npt.NDArray[np.integer[Any]] | None = None
    ) -> int:
        """Forget a class (enrolled or shipped) or specific samples (a list or 1-D integer array of ids); returns
        how many enrolled samples went. The head is refit on the next prediction."""
        shipped = [] if self.prior is None else [str(c) for c in self.prior.classes]
        with self._head_lock:
            removed = self.store.remove(label=label, ids=ids, shipped=shipped)
            self._changes += 1
        return removed

    def export_enrolment(
        self, path: str | os.PathLike[str], *, images: Sequence[str | os.PathLike[str]] | None = None
    ) -> Enrolment:
        """Write every enrolled sample (features, labels, keys) to one verified file for ``edgetl merge``.

        The file is bound to the model digest of the precision in use, so a host refuses it against another
        backbone or precision; samples enrolled under another model are re-extracted first (those kept as
        features only cannot be, and are left out with a warning). No image leaves the device unless
        ``images`` names image files: those whose pixels match an enrolled sample are attached as they are.
        """
        from edgetl_runtime.enrolment import export_samples

        with self._head_lock:
            self._complete_features()
        manifest, precision = self.bundle.manifest, self.backend.precision
        return export_samples(self.store, self.extractor, manifest, precision, path, images, _runtime_version())

    # ---------------------------------------------------------------- fitting and prediction

    def fit(self) -> Learner:
        """Refit the head from every enrolled sample (milliseconds: features come from the cache).

        A full fit also re-runs model selection (``auto``), which incremental adds keep fixed.
        """
        with self._head_lock:
            self._complete_features()
            _, labels, keys, features = self.store.samples_with_keys()  # (N,), N, (N, D)
            prior = self._prior_now()
            if prior is not None and len(prior.counted_keys):  # this device's samples a merge already folded in
                fresh = ~self._already_counted(keys)
                labels, features = labels[fresh], features[fresh]
            if len(labels) == 0 and prior is None:
                why = " and every shipped class was removed" if self.prior is not None else ""
                if self.unavailable:
                    why = (
                        f" that this model can use: {self.unavailable} cannot be re-extracted (kept as features only "
                        "under another model, or their kept images are damaged: see the warnings at load)"
                    )
                raise NotFittedError(f"No samples are enrolled{why}; call add(images, label) for a class first.")
            if self.head_kind == AdaptiveHead.kind and prior is None:  # adapts to the images predicted so far
                head: BaseHead | AutoHead = AdaptiveHead().fit(features, labels, unlabelled=self.store.seen_features())
            else:
                head = fit_with_prior(self.head_kind, features, labels, prior)
            self._fitted = (self._changes, head)
        return self

    def _fit_at_load(self) -> None:
        """Fit now; a state whose every sample this model cannot use still opens (predict says why)."""
        try:
            self.fit()
        except NotFittedError:
            if not self.unavailable:
                raise

    def _complete_features(self) -> None:
        """Compute this model's features of samples enrolled under another precision or bundle (once: they
        are stored); warn about those kept as features only, which this model cannot use."""
        lost, damaged = reextract_missing(self.store, self.extractor, self.progress)  # damaged: warned already
        if any(n > self._warned_features_only.get(label, 0) for label, n in lost.items()):  # new ones only
            self._warned_features_only = lost
            warn(
                f"{sum(lost.values())} enrolled sample(s) {lost} were kept as features only (keep_images='none', or "
                f"enrolled before edgetl kept images) under another model, so this {self.backend.precision.value} "
                "model cannot use them: they are left out of the head. Fix: load the precision (and bundle) they "
                "were enrolled with, or enrol those images again."
            )
        self.unavailable = {label: lost.get(label, 0) + damaged.get(label, 0) for label in {*lost, *damaged}}

    def _already_counted(self, keys: list[str]) -> npt.NDArray[np.bool_]:
        """Which image hashes a merged shipped head already counts; enrolment files written before state
        schema 2 named samples by their schema-1 keys (pixels + model), which count too."""
        if self.prior is None or not len(self.prior.counted_keys):
            return np.zeros(len(keys), dtype=bool)
        counted = self.prior.already_counted(keys)
        legacy = self.store.legacy_keys(keys)  # schema-1 key -> image hash, under every model
        if legacy:
            hit = {legacy[k] for k, c in zip(legacy, self.prior.already_counted(list(legacy)), strict=True) if c}
            counted |= np.array([k in hit for k in keys], dtype=bool)
        return np.asarray(counted, dtype=bool)

    def forget_images(self) -> int:
        """Delete every kept image from the state and keep features only from now on; returns how many.

        Enrolments stay, for the precisions that already have their features; another precision or a new
        bundle can no longer compute features for them (re-enrol the images there).
        """
        with self._head_lock:
            return self.store.forget_images()

    def _prior_now(self) -> Prior | None:
        """The shipped head without the classes this device removed."""
        if self.prior is None:
            return None
        removed = self.store.removed_shipped_labels()
        return self.prior.drop(removed) if removed else self.prior

    def _sync_external(self) -> None:
        """Mark the head stale if another process added or removed samples; call with ``_head_lock`` held.

        ``PRAGMA data_version`` costs microseconds and moves only on other connections' commits; the
        samples token then tells enrolments from mere cache writes, so a neighbour's predictions never
        force a refit.
        """
        version = self.store.data_version()
        if version == self._data_version:
            return
        self._data_version = version
        token = (*self.store.samples_token(), len(self.store.removed_shipped_labels()))
        if token != self._samples_token:
            self._samples_token = token
            self._changes += 1

    def _current_head(self) -> BaseHead | AutoHead:
        """The head reflecting every change committed by any process before the call; hold ``_head_lock``."""
        self._sync_external()
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

    def save(self) -> bool:
        """Checkpoint and truncate the write-ahead log (every ``add`` is already durable when it returns);
        False when another connection's read kept part of it."""
        return self.store.checkpoint()

    def info(self) -> dict[str, Any]:
        m = self.bundle.manifest
        return {
            "bundle": str(self.bundle.path),
            "backbone": m.backbone.name,
            "feature_dim": m.backbone.feature_dim,
            "precisions": [p.value for p in m.precisions],
            "backend": self.backend.name,
            "precision": self.backend.precision.value,
            "int8_kernel": self.selection.kernel if self.selection else None,
            "chosen_because": self.selection.reason if self.selection else "backend given by the caller",
            "selection": self.selection.to_dict() if self.selection else None,
            "input_size": list(m.preprocess.input_size),
            "samples": len(self.store),
            "classes": self.store.counts(),
            "unavailable_to_this_model": self.unavailable,
            "state": self.store.storage(),
            "head": self.head_kind,
            "adaptation": None if self._fitted is None else getattr(self._fitted[1], "adaptation_", None),
            "shipped_head": self._shipped_info(),
        }

    def _shipped_info(self) -> dict[str, Any] | None:
        if self.prior is None:
            return None
        section = self.bundle.manifest.head
        return {
            "classes": section.get("counts"),
            "removed_here": self.store.removed_shipped_labels(),
            "host_accuracy": section.get("accuracy"),
            "merged": section.get("merged"),
        }

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Learner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _runtime_version() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return {"edgetl-runtime": version("edgetl-runtime")}
    except PackageNotFoundError:
        return {}
