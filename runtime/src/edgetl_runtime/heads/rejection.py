"""Unknown rejection by cosine similarity to centred class means, calibrated on the enrolled samples.

How the threshold is calibrated (every head uses this, whatever its classifier):

1. Each enrolled feature is power-transformed and L2-normalised (the head's own transform), giving z.
   Class means m_c are running sums / counts of z; the centre mu is the mean of the class means.
   The similarity of a sample to class c is cos(z - mu, m_c - mu); its *score* is the max over c.
2. Each enrolled sample i gets an exact leave-one-out score: its similarity to its own class mean
   recomputed without it (without its whole group when ``groups`` are given, e.g. an image and its
   flipped copy), with the centre recomputed accordingly. If its own class is then the most
   similar, the sample counts as *correctly classified*.
3. ``threshold_`` is the ``quantile`` (default 5 %) of the scores of the correctly classified samples
   (of all scored samples if none is correct). A query scoring below it is :data:`UNKNOWN`, so about
   ``quantile`` of genuine in-class samples are expected to be rejected.
4. A sample that is alone in its class (group) has no leave-one-out score. If no sample has one
   (one shot per class), the threshold falls back to the largest cosine between two different class
   means: a query less similar to its nearest class than the two closest classes are to each other
   is unknown. With a single enrolled class and sample, nothing is rejected (threshold -inf).
5. With a single enrolled class there is no centre to subtract (it would be the class mean itself):
   similarities are plain cosines of the normalised features, calibrated the same way, so one class
   with a few samples already rejects what is unlike it.

``partial_fit`` updates the means exactly; the scores of the new samples are computed (leave-one-out)
at the moment they join, and older scores are kept as they were (dropped when the class count crosses
from one to two, which changes the centring; the next full ``fit`` rescores every sample).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating[Any]]  # float64, or float32 for float32 features
IntArray = npt.NDArray[np.int64]


def class_sums(Z: FloatArray, y_idx: IntArray, n_classes: int) -> tuple[FloatArray, FloatArray]:
    """Per-class sums ``(C, D)`` and counts ``(C,)`` (a one-hot matmul; ``np.add.at`` is slow)."""
    onehot = np.zeros((n_classes, len(y_idx)), dtype=Z.dtype)  # Z's precision: no (N, D) up-cast
    onehot[y_idx, np.arange(len(y_idx))] = 1.0
    return (onehot @ Z).astype(np.float64), onehot.sum(axis=1, dtype=np.float64)


def _unit(A: FloatArray) -> FloatArray:
    out: FloatArray = A / np.maximum(np.linalg.norm(A, axis=-1, keepdims=True), 1e-12)
    return out


def loo_cosines(
    Z: FloatArray,
    y_idx: IntArray,
    sums: FloatArray,
    counts: FloatArray,
    groups: IntArray,
    kernel: FloatArray | None = None,
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Exact leave-one-group-out cosines ``(N, C)`` of each sample to every centred class mean.

    Holding out sample i (with its group) changes its own class mean *and* the centre (the mean of
    the class means); both are handled exactly through the Gram matrix of the class means. A class
    left empty drops out of the centre and gets cosine -inf; ``valid`` marks samples whose class
    survives.

    ``kernel`` is ``Z Z^T`` when the caller has it and ``sums``/``counts`` are the class sums of ``Z``
    itself: every product is then read off the ``(N, N)`` kernel, with no pass over the D features.
    """
    n, n_cls = len(Z), len(counts)
    g = np.asarray(groups).ravel()
    if n and (g.dtype.kind not in "iu" or g.min() < 0 or g.max() > 4 * n):  # any ids -> 0..G-1
        g = np.unique(g, return_inverse=True)[1].ravel()
    singles = n == 0 or int(np.bincount(g).max()) == 1  # every sample is its own group
    inv_counts = 1.0 / np.maximum(counts, 1.0)
    if kernel is not None:
        onehot = np.zeros((n_cls, n))
        onehot[y_idx, np.arange(n)] = 1.0
        ko = kernel @ onehot.T  # (N, C) z . class sum
        za = ko * inv_counts  # (N, C) z . class mean
        zz = np.diagonal(kernel).copy()
        sums_means = (onehot @ ko) * inv_counts  # (C, C) class sums . class means
    else:
        means = sums * inv_counts[:, None]  # (C, D)
        za = Z @ means.T
        zz = np.einsum("nd,nd->n", Z, Z)
        sums_means = sums @ means.T
    held_n: FloatArray
    if singles:  # what leaves is the sample itself
        held_n, hm, hh, zh = np.ones(n), za, zz, zz
    else:
        _, p = np.unique(np.stack([y_idx, g], axis=1), axis=0, return_inverse=True)
        p = p.ravel()
        if kernel is not None:
            cells = np.zeros((int(p.max()) + 1, n))  # (P, N) one-hot of the (class, group) cells
            cells[p, np.arange(n)] = 1.0
            kc = kernel @ cells.T  # (N, P) z . cell sum
            held_n = cells.sum(axis=1)[p]
            hm = ((cells @ ko) * inv_counts)[p]  # (N, C) held . class means
            hh = np.einsum("pn,np->p", cells, kc)[p]
            zh = kc[np.arange(n), p]
        else:
            pair_sums, pair_counts = class_sums(Z, p, int(p.max()) + 1)  # (P, D) (class, group) cells
            held, held_n = pair_sums[p], pair_counts[p]  # (N, D), (N,) what leaves with sample i
            hm, hh, zh = held @ means.T, np.einsum("nd,nd->n", held, held), np.einsum("nd,nd->n", Z, held)
    return _loo_cosines_from_products(y_idx, counts, za, zz, sums_means, held_n, hm, hh, zh)


def _loo_cosines_from_products(
    y_idx: IntArray,
    counts: FloatArray,
    za: FloatArray,
    zz: FloatArray,
    sums_means: FloatArray,
    held_n: FloatArray,
    hm: FloatArray,
    hh: FloatArray,
    zh: FloatArray,
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """:func:`loo_cosines` from the inner products it needs (see there for the maths).

    Holding sample n out changes one row and column of the (C, C) Gram matrix of the class means
    (its own class y), so every product with the centre is the full Gram's plus a correction along
    y: O(N C + C^2) with no (N, C, C) array.
    """
    n = len(za)
    rows = np.arange(n)
    own_counts = counts[y_idx]
    rest = own_counts - held_n  # (N,) own-class samples left after the hold-out
    valid = rest > 0
    inv_rest = 1.0 / np.maximum(rest, 1.0)
    means_means = sums_means / np.maximum(counts, 1.0)[:, None]  # (C, C) Gram of the class means
    # The held-out own mean is (s_y - h) / rest; every product with it expands into cached products.
    cross = (sums_means[y_idx] - hm) * inv_rest[:, None]  # (N, C) held-out own mean . class means
    own_sq = (np.diagonal(sums_means)[y_idx] * own_counts - 2 * hm[rows, y_idx] * own_counts + hh) * inv_rest**2
    za = za.copy()
    za[rows, y_idx] = (za[rows, y_idx] * own_counts - zh) * inv_rest
    if int((counts > 0).sum()) < 2:  # one class: no centre (see SimilarityRejector.center_), plain cosines
        mean_sq = np.repeat(np.diagonal(means_means)[None], n, axis=0)  # (N, C)
        mean_sq[rows, y_idx] = own_sq
        sims = za / (np.sqrt(np.maximum(zz, 1e-24))[:, None] * np.sqrt(np.maximum(mean_sq, 1e-24)))
        sims[:, counts == 0] = -np.inf
        sims[rows[~valid], y_idx[~valid]] = -np.inf
        return sims, valid
    w = np.ones_like(za)  # (N, C) weights of the centre over the surviving classes
    w[rows, y_idx] = valid
    w /= np.maximum(w.sum(axis=1, keepdims=True), 1.0)
    w_own = w[rows, y_idx]  # (N,)
    # s[n, k] = held-out class mean k . centre: the full Gram's, with column y swapped for cross.
    s = w @ means_means + w_own[:, None] * (cross - means_means[y_idx])
    s[rows, y_idx] = np.einsum("nk,nk->n", cross, w) + (own_sq - cross[rows, y_idx]) * w_own
    mu2 = np.einsum("nk,nk->n", s, w)  # (N,) |centre|^2
    zmu = np.einsum("nk,nk->n", za, w)  # (N,) z . centre
    num = za - zmu[:, None] - s + mu2[:, None]
    z_norm = np.sqrt(np.maximum(zz - 2 * zmu + mu2, 1e-24))
    mean_sq = np.repeat(np.diagonal(means_means)[None], n, axis=0)  # (N, C) |held-out class mean|^2
    mean_sq[rows, y_idx] = own_sq
    m_norm = np.sqrt(np.maximum(mean_sq - 2 * s + mu2[:, None], 1e-24))
    sims = num / (z_norm[:, None] * m_norm)
    sims[rows[~valid], y_idx[~valid]] = -np.inf
    return sims, valid


class SimilarityRejector:
    """Running class sums of normalised features plus leave-one-out calibration scores.

    ``fit`` keeps only the class sums and defers the leave-one-out calibration (``scores_``,
    ``correct_``, ``loo_cosines_``) until one of them or ``threshold_`` is first read, so a head that
    never rejects never pays for it. The deferred inputs are immutable snapshots and the results are
    published as one tuple, so two threads racing on the first read compute the same value twice at
    worst. ``partial_fit`` and ``keep_classes`` complete the pending calibration first and replace the
    calibration tuple, which also invalidates the cached threshold.
    """

    def __init__(self, quantile: float = 0.05) -> None:
        self.quantile = quantile

    def fit(
        self,
        Z: FloatArray,
        y_idx: IntArray,
        n_classes: int,
        groups: IntArray | None = None,
        kernel: FloatArray | None = None,
    ) -> SimilarityRejector:
        """Start from scratch on ``Z`` (N, D) normalised features with class indices ``y_idx``.

        ``kernel`` is ``Z Z^T`` if the caller already has it (the calibration is then O(N^2 C)). The
        (C, D) class sums wait until something needs them (the kernel path does not).
        """
        self.counts_: FloatArray = np.bincount(y_idx, minlength=n_classes).astype(np.float64)
        self._sums: FloatArray | None = None
        self._sums_source: tuple[FloatArray, IntArray, int] | None = (Z, y_idx, n_classes)
        g = np.arange(len(Z)) if groups is None else np.asarray(groups).ravel()
        self._pending: tuple[Any, ...] | None = (Z, y_idx, g, kernel, self.counts_)
        self._calib: tuple[FloatArray, npt.NDArray[np.bool_], IntArray] | None = None
        self._loo: FloatArray | None = None
        self._thr: tuple[Any, float] | None = None
        return self

    def _calibration(self) -> tuple[FloatArray, npt.NDArray[np.bool_], IntArray]:
        """``(scores_, correct_, score_class_)``, computing the deferred leave-one-out on first use."""
        calib = self._calib
        if calib is None:
            pending = self._pending
            if pending is None:  # another thread published it between our two reads
                calib = self._calib
                assert calib is not None
                return calib
            Z, y_idx, g, kernel, counts = pending
            sums = self.sums_ if kernel is None else np.empty((len(counts), 0))  # the kernel path reads no sums
            sims, valid = loo_cosines(Z, y_idx, sums, counts, g, kernel)
            own = sims[np.arange(len(Z)), y_idx]
            correct = valid & (np.argmax(sims, axis=1) == y_idx)
            calib = (np.where(valid, own, np.nan), correct, y_idx.astype(np.int64))
            self._loo = sims
            self._calib = calib
            self._pending = None
        return calib

    @property
    def sums_(self) -> FloatArray:
        """Class sums ``(C, D)`` of the normalised features, computed on first use after ``fit``."""
        sums = self._sums
        if sums is None:
            source = self._sums_source  # immutable snapshot: racing threads compute the same sums
            if source is None:  # another thread published them between our two reads
                assert self._sums is not None
                return self._sums
            sums = class_sums(*source)[0]
            self._sums, self._sums_source = sums, None
        return sums

    @sums_.setter
    def sums_(self, value: FloatArray) -> None:
        self._sums, self._sums_source = value, None

    @property
    def scores_(self) -> FloatArray:
        """Leave-one-out similarity of each enrolled sample to its own class (NaN: not scorable)."""
        return self._calibration()[0]

    @property
    def correct_(self) -> npt.NDArray[np.bool_]:
        """Whether each enrolled sample's leave-one-out nearest class is its own."""
        return self._calibration()[1]

    @property
    def score_class_(self) -> IntArray:
        """Class index of each calibration score."""
        return self._calibration()[2]

    @property
    def loo_cosines_(self) -> FloatArray:
        """``(N, C)`` transient (not saved): NCM's exact LOO cosines from the last ``fit``, reused by AutoHead."""
        self._calibration()
        if self._loo is None:
            raise AttributeError("loo_cosines_ exists only after fit (it is not saved)")
        return self._loo

    def _set_calibration(
        self, scores: FloatArray, correct: npt.NDArray[np.bool_], score_class: IntArray
    ) -> SimilarityRejector:
        self._pending, self._loo, self._thr = None, None, None
        self._calib = (scores, correct, score_class.astype(np.int64))
        return self

    def partial_fit(self, Z: FloatArray, y_idx: IntArray, n_classes: int, remap: IntArray) -> SimilarityRejector:
        """Add samples; ``remap[k]`` is the new index of old class k (classes may have been inserted)."""
        old_scores, old_correct, old_class = self._calibration()  # scored against the old means
        was_single = self.single_class_
        sums, counts = np.zeros((n_classes, Z.shape[1])), np.zeros(n_classes)
        sums[remap], counts[remap] = self.sums_, self.counts_
        new_sums, new_counts = class_sums(Z, y_idx, n_classes)
        self.sums_, self.counts_ = sums + new_sums, counts + new_counts
        if was_single != self.single_class_:  # old scores are uncentred cosines: not comparable any more
            old_scores, old_correct = np.full(len(old_scores), np.nan), np.zeros(len(old_correct), dtype=bool)
        sims, valid = loo_cosines(Z, y_idx, self.sums_, self.counts_, np.arange(len(Z)))
        own = sims[np.arange(len(Z)), y_idx]
        correct = valid & (np.argmax(sims, axis=1) == y_idx)
        return self._set_calibration(
            np.concatenate([old_scores, np.where(valid, own, np.nan)]),
            np.concatenate([old_correct, correct]),
            np.concatenate([remap[old_class], y_idx]),
        )

    def keep_classes(self, keep_idx: IntArray) -> SimilarityRejector:
        """Drop every class not in ``keep_idx`` (old indices, ascending) with its calibration scores."""
        scores, correct, score_class = self._calibration()
        new_index = np.full(len(self.counts_), -1, dtype=np.int64)
        new_index[keep_idx] = np.arange(len(keep_idx))
        kept = new_index[score_class] >= 0
        was_single = self.single_class_
        self.sums_, self.counts_ = self.sums_[keep_idx], self.counts_[keep_idx]
        if was_single != self.single_class_:  # centred scores do not calibrate uncentred cosines
            scores, correct = np.full(len(scores), np.nan), np.zeros(len(correct), dtype=bool)
        return self._set_calibration(scores[kept], correct[kept], new_index[score_class[kept]])

    @property
    def means_(self) -> FloatArray:
        """Class means ``(C, D)`` of the normalised features."""
        out: FloatArray = self.sums_ / np.maximum(self.counts_, 1.0)[:, None]
        return out

    @property
    def center_(self) -> FloatArray:
        """Mean of the class means ``(D,)`` (balanced, so a large class does not dominate).

        With a single enrolled class the centre would be that class's own mean, and every centred
        cosine to it degenerate (a moon photo would score like a cat): the centre is then the origin,
        i.e. plain cosines of the normalised features, calibrated by leave-one-out all the same.
        """
        if int((self.counts_ > 0).sum()) < 2:
            return np.zeros(self.sums_.shape[1])
        out: FloatArray = self.means_.mean(axis=0)
        return out

    @property
    def single_class_(self) -> bool:
        """Whether fewer than two classes are enrolled (uncentred cosines, see ``center_``)."""
        return int((self.counts_ > 0).sum()) < 2

    def cosines(self, Z: FloatArray) -> FloatArray:
        """Cosine ``(N, C)`` between centred samples and centred class means."""
        mu, means = self.center_, self.means_
        protos = _unit(means - mu).astype(Z.dtype, copy=False)  # (C, D) in the queries' precision
        out: FloatArray = _unit(Z - mu.astype(Z.dtype, copy=False)) @ protos.T  # float32 Z stays float32
        return out

    def score(self, Z: FloatArray) -> FloatArray:
        """Similarity ``(N,)`` to the nearest class mean; low means unlike anything enrolled."""
        out: FloatArray = self.cosines(Z).max(axis=1)
        return out

    @property
    def threshold_(self) -> float:
        """Score below which a query is unknown (see the module docstring for the calibration); cached."""
        calib = self._calibration()
        cached = self._thr
        if cached is not None and cached[0][0] is calib and cached[0][1] == self.quantile:
            return cached[1]
        value = self._threshold(calib[0], calib[1])
        self._thr = ((calib, self.quantile), value)
        return value

    def _threshold(self, scores: FloatArray, correct: npt.NDArray[np.bool_]) -> float:
        valid = ~np.isnan(scores)
        pick = correct if correct.any() else valid
        if pick.any():
            return float(np.quantile(scores[pick], self.quantile))
        present = self.counts_ > 0
        if present.sum() < 2:
            return float("-inf")
        protos = _unit(self.means_[present] - self.center_)
        cos = protos @ protos.T
        np.fill_diagonal(cos, -np.inf)
        return float(cos.max())

    def to_npz_dict(self) -> dict[str, npt.NDArray[Any]]:
        return {
            "quantile": np.array(self.quantile),
            "sums_": self.sums_,
            "counts_": self.counts_,
            "scores_": self.scores_,
            "correct_": self.correct_,
            "score_class_": self.score_class_,
        }

    @classmethod
    def from_npz_dict(cls, d: dict[str, npt.NDArray[Any]]) -> SimilarityRejector:
        rej = cls(float(d["quantile"]))
        rej.sums_, rej.counts_ = np.asarray(d["sums_"], np.float64), np.asarray(d["counts_"], np.float64)
        return rej._set_calibration(
            np.asarray(d["scores_"], np.float64), np.asarray(d["correct_"], bool), np.asarray(d["score_class_"])
        )
