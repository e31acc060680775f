"""The Learner's head, kept current across threads and processes.

The head is derived state: it reflects a change count, and every use (fit, incremental update,
predict) holds one lock, so ``predict`` from several threads while another adds never sees a
half-updated head and an add committed during a refit is never lost. Another process's commits to the
same state file move SQLite's ``data_version``; the samples token then tells enrolments from mere
cache writes, so a neighbour's predictions never force a refit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime.arguments import LABEL_RULE, usable_labels
from edgetl_runtime.blas import single_threaded_blas
from edgetl_runtime.errors import NotFittedError
from edgetl_runtime.heads import AdaptiveHead, AutoHead, BaseHead, Prior, create_head, fit_with_prior, head_for_prior
from edgetl_runtime.heads.seen_pool import SeenPool
from edgetl_runtime.state.store import FeatureStore
from edgetl_runtime.warn import warn

__all__ = ["HeadKeeper"]

# head="adaptive" re-adapts as images stream in, once this many new ones and this share of the pool arrived.
READAPT_MIN = 20
READAPT_GROWTH = 0.1

Head = BaseHead | AutoHead


class HeadKeeper:
    """Fits the head from the state (and the shipped prior), updates it in place, refits it when stale.

    ``prepare`` runs before every full fit (it computes this model's missing features) and returns the
    samples this model cannot use, by label, so a fit with nothing usable can say why.
    """

    def __init__(
        self, store: FeatureStore, kind: str, prior: Prior | None, prepare: Callable[[], dict[str, int]]
    ) -> None:
        create_head(kind)  # refuse an unknown head name now, not at the first prediction after enrolling
        if prior is not None:
            head_for_prior(kind, prior)  # and a head that cannot continue a shipped one (logistic)
        self.store, self.kind, self.prior, self._prepare = store, kind, prior, prepare
        self.lock = threading.RLock()
        self._changes = 0  # bumped with every committed add/remove
        self._fitted: tuple[int, Head] | None = None  # published with the change count it reflects
        self._data_version = store.data_version()
        self._samples_token = self._token()
        self._seen: SeenPool | None = None  # head="adaptive": the seen images, transformed once each
        self._adapted_on, self._unadapted = 0, 0  # seen images at the last fit, and cached since

    def _token(self) -> tuple[object, ...]:
        return (*self.store.samples_token(), tuple(self.store.removed_shipped_labels()))  # remove, restore

    def changed(self) -> None:
        """A change this process committed: the head is stale until refit or updated."""
        with self.lock:
            self._changes += 1

    def prior_now(self) -> Prior | None:
        """The shipped head without the classes this device removed."""
        if self.prior is None:
            return None
        removed = self.store.removed_shipped_labels()
        return self.prior.drop(removed) if removed else self.prior

    def already_counted(self, keys: Sequence[str], labels: Any) -> npt.NDArray[np.bool_]:
        """Which image hashes a merged shipped head already counts under the label this device gives them;
        enrolment files written before state schema 2 named samples by their schema-1 keys (pixels + model),
        which count too."""
        if self.prior is None or not len(self.prior.counted_keys):
            return np.zeros(len(keys), dtype=bool)
        counted = self.prior.already_counted(list(keys), labels)
        legacy = self.store.images.legacy_keys(keys)  # schema-1 key -> image hash, under every model
        if legacy:
            label_of = dict(zip(keys, (str(v) for v in labels), strict=True))
            old = list(legacy)
            found = self.prior.already_counted(old, [label_of[legacy[k]] for k in old])
            hit = {legacy[k] for k, c in zip(old, found, strict=True) if c}
            counted |= np.array([k in hit for k in keys], dtype=bool)
        return np.asarray(counted, dtype=bool)

    def knows(self, labels: Sequence[str]) -> bool:
        """Whether the current head already has every one of ``labels`` as a class (no new class to count)."""
        fitted = self._fitted
        return fitted is not None and set(labels) <= {str(c) for c in fitted[1].classes_}

    def fit(self) -> Head:
        """Refit from every usable enrolled sample and the prior (also re-runs ``auto``'s model selection)."""
        with self.lock:
            unavailable = self._prepare()
            _, labels, keys, features = self.store.samples_with_keys()  # (N,), N, (N, D)
            usable, refused = usable_labels(labels)  # a label stored before a rule refused it: left out, named
            if refused:
                warn(
                    f"enrolled samples {refused} have labels a head refuses ({LABEL_RULE}): they are left out. "
                    "Fix: remove those classes (remove(label=...)) and enrol the images under a valid label."
                )
                keys = [k for k, u in zip(keys, usable, strict=True) if u]
                labels, features = labels[usable], features[usable]
            prior = self.prior_now()
            if prior is not None and len(prior.counted_keys):  # this device's samples a merge already folded in
                fresh = ~self.already_counted(keys, labels)
                labels, features = labels[fresh], features[fresh]
            if len(labels) == 0 and prior is None:
                why = " and every shipped class was removed" if self.prior is not None else ""
                if unavailable:
                    why = (
                        f" that this model can use: {unavailable} cannot be re-extracted (kept as features only "
                        "under another model, or their kept images are damaged: see the warnings at load)"
                    )
                raise NotFittedError(f"No samples are enrolled{why}; call add(images, label) for a class first.")
            if self.kind == AdaptiveHead.kind and prior is None:  # adapts to the images predicted so far
                adaptive = AdaptiveHead()
                seen = self._seen_now(features.shape[1], adaptive.config.max_seen)
                head: Head = adaptive.fit(features, labels, unlabelled=seen)
            else:
                head = fit_with_prior(self.kind, features, labels, prior)
            self._fitted = (self._changes, head)
            return head

    def saw(self, new_images: int) -> None:
        """``new_images`` seen images were just cached. ``head="adaptive"`` re-adapts now once this process has
        cached :data:`READAPT_MIN` of them and :data:`READAPT_GROWTH` of the pool it adapted to (a refit reads and
        transforms only the new ones: ~30 ms with 1000 seen at the default width); other processes' predictions
        join at the next refit."""
        if self.kind != AdaptiveHead.kind or new_images <= 0 or self.prior is not None:
            return
        with self.lock:
            self._unadapted += new_images
            if self._fitted is None or self._unadapted < max(READAPT_MIN, READAPT_GROWTH * self._adapted_on):
                return
            try:
                self.fit()
            except NotFittedError:  # nothing enrolled any more: the next use says so
                self._unadapted = 0

    def _seen_now(self, n_features: int, limit: int) -> SeenPool:
        """The newest ``limit`` seen images, brought up to date: only those new since the last fit are read and
        transformed (:class:`~edgetl_runtime.heads.seen_pool.SeenPool`); those evicted or enrolled since leave."""
        if self._seen is None or self._seen.n_features != n_features:
            self._seen = SeenPool(n_features)
        cache = self.store.cache
        self._seen.sync(cache.seen_keys(limit), cache.get)
        self._adapted_on, self._unadapted = len(self._seen), 0
        return self._seen

    def commit_added(
        self,
        commit: Callable[[], list[int]],
        names: Sequence[str],
        features: npt.NDArray[Any],
        fresh: npt.NDArray[np.bool_],
    ) -> list[int]:
        """Run ``commit`` (the enrolment transaction) under the lock and fold its samples into a current head;
        ``fresh`` marks those the shipped head does not count already (see :meth:`already_counted`)."""
        with self.lock:
            self._sync_external()  # another process's enrolment since the last fit: refit, do not update
            ids = commit()
            fitted, self._changes = self._fitted, self._changes + 1
            if fitted is not None and fitted[0] == self._changes - 1:  # current head: update it in place
                if fresh.any():
                    # Small products: BLAS threads spinning on a busy 2-core device cost more than they save
                    # (benchmarks/bench_fleet.py times it).
                    with single_threaded_blas():
                        fitted[1].partial_fit(features[fresh], np.asarray(names)[fresh])
                self._fitted = (self._changes, fitted[1])
            return ids

    def adaptation(self) -> dict[str, Any] | None:
        """What the fitted head learned from the seen images (``head="adaptive"``), or None."""
        fitted = self._fitted
        return None if fitted is None else getattr(fitted[1], "adaptation_", None)

    def shipped_info(self, section: dict[str, Any]) -> dict[str, Any] | None:
        """The shipped head as ``Learner.info()`` reports it (None without one)."""
        if self.prior is None:
            return None
        return {
            "classes": section.get("counts"),
            "removed_here": self.store.removed_shipped_labels(),
            "host_accuracy": section.get("accuracy"),
            "merged": section.get("merged"),
        }

    def _sync_external(self) -> None:
        """Mark the head stale if another process added or removed samples; call with the lock held."""
        version = self.store.data_version()
        if version == self._data_version:
            return
        self._data_version = version
        token = self._token()
        if token != self._samples_token:
            self._samples_token = token
            self._changes += 1

    def current(self) -> Head:
        """The head reflecting every change committed by any process before the call."""
        with self.lock:
            self._sync_external()
            if self._fitted is None or self._fitted[0] != self._changes:
                return self.fit()  # threads queued on the lock behind this refit find it current and reuse it
            return self._fitted[1]
