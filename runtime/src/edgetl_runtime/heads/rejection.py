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

``partial_fit`` updates the means exactly; the scores of the new samples are computed (leave-one-out)
at the moment they join, and older scores are kept as they were.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def class_sums(Z: FloatArray, y_idx: IntArray, n_classes: int) -> tuple[FloatArray, FloatArray]:
    """Per-class sums ``(C, D)`` and counts ``(C,)`` (a one-hot matmul; ``np.add.at`` is slow)."""
    onehot = np.zeros((n_classes, len(y_idx)))
    onehot[y_idx, np.arange(len(y_idx))] = 1.0
    return onehot @ Z, onehot.sum(axis=1)


def _unit(A: FloatArray) -> FloatArray:
    out: FloatArray = A / np.maximum(np.linalg.norm(A, axis=-1, keepdims=True), 1e-12)
    return out


def loo_cosines(
    Z: FloatArray, y_idx: IntArray, sums: FloatArray, counts: FloatArray, groups: IntArray
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Exact leave-one-group-out cosines ``(N, C)`` of each sample to every centred class mean.

    Holding out sample i (with its group) changes its own class mean *and* the centre (the mean of
    the class means); both are handled exactly through the Gram matrix of the class means. A class
    left empty drops out of the centre and gets cosine -inf; ``valid`` marks samples whose class
    survives.
    """
    n, n_cls = len(Z), len(counts)
    rows = np.arange(n)
    means = sums / np.maximum(counts, 1.0)[:, None]  # (C, D)
    za = Z @ means.T  # (N, C) z . class mean
    zz = np.einsum("nd,nd->n", Z, Z)
    if len(np.unique(groups)) == n:  # every sample is its own group: what leaves is the sample itself
        held_n, hm, hh, zh = np.ones(n), za, zz, zz
    else:
        _, p = np.unique(np.stack([y_idx, np.asarray(groups).ravel()], axis=1), axis=0, return_inverse=True)
        pair_sums, pair_counts = class_sums(Z, p.ravel(), int(p.max()) + 1)  # (P, D) (class, group) cells
        held, held_n = pair_sums[p.ravel()], pair_counts[p.ravel()]  # (N, D), (N,) what leaves with sample i
        hm, hh, zh = held @ means.T, np.einsum("nd,nd->n", held, held), np.einsum("nd,nd->n", Z, held)
    rest = counts[y_idx] - held_n  # (N,) own-class samples left after the hold-out
    valid = rest > 0
    inv_rest = 1.0 / np.maximum(rest, 1.0)
    own_counts = counts[y_idx]
    # The held-out own mean is (s_y - h) / rest; every product with it expands into cached products.
    cross = ((sums @ means.T)[y_idx] - hm) * inv_rest[:, None]  # (N, C) held-out own mean . class means
    gram = np.broadcast_to(means @ means.T, (n, n_cls, n_cls)).copy()  # (N, C, C) Gram of the rows
    gram[rows, y_idx, :] = cross
    gram[rows, :, y_idx] = cross
    ss = np.einsum("kd,kd->k", sums, sums)[y_idx]
    gram[rows, y_idx, y_idx] = (ss - 2 * hm[rows, y_idx] * own_counts + hh) * inv_rest**2
    za = za.copy()
    za[rows, y_idx] = (za[rows, y_idx] * own_counts - zh) * inv_rest
    w = np.ones((n, n_cls))  # (N, C) weights of the centre over the surviving classes
    w[rows, y_idx] = valid
    w /= np.maximum(w.sum(axis=1, keepdims=True), 1.0)
    s = np.einsum("nkl,nl->nk", gram, w)  # (N, C) class mean . centre
    mu2 = np.einsum("nk,nk->n", s, w)  # (N,) |centre|^2
    zmu = np.einsum("nk,nk->n", za, w)  # (N,) z . centre
    num = za - zmu[:, None] - s + mu2[:, None]
    z_norm = np.sqrt(np.maximum(zz - 2 * zmu + mu2, 1e-24))
    m_norm = np.sqrt(np.maximum(np.einsum("nkk->nk", gram) - 2 * s + mu2[:, None], 1e-24))
    sims = num / (z_norm[:, None] * m_norm)
    sims[rows[~valid], y_idx[~valid]] = -np.inf
    return sims, valid


class SimilarityRejector:
    """Running class sums of normalised features plus leave-one-out calibration scores."""

    def __init__(self, quantile: float = 0.05) -> None:
        self.quantile = quantile

    def fit(self, Z: FloatArray, y_idx: IntArray, n_classes: int, groups: IntArray | None = None) -> SimilarityRejector:
        """Start from scratch on ``Z`` (N, D) normalised features with class indices ``y_idx``."""
        self.sums_, self.counts_ = class_sums(Z, y_idx, n_classes)  # (C, D), (C,)
        self.scores_, self.correct_ = self._loo_scores(Z, y_idx, groups)
        self.score_class_ = y_idx.astype(np.int64)
        return self

    def partial_fit(self, Z: FloatArray, y_idx: IntArray, n_classes: int, remap: IntArray) -> SimilarityRejector:
        """Add samples; ``remap[k]`` is the new index of old class k (classes may have been inserted)."""
        sums, counts = np.zeros((n_classes, Z.shape[1])), np.zeros(n_classes)
        sums[remap], counts[remap] = self.sums_, self.counts_
        new_sums, new_counts = class_sums(Z, y_idx, n_classes)
        self.sums_, self.counts_ = sums + new_sums, counts + new_counts
        scores, correct = self._loo_scores(Z, y_idx, None)
        self.scores_ = np.concatenate([self.scores_, scores])
        self.correct_ = np.concatenate([self.correct_, correct])
        self.score_class_ = np.concatenate([remap[self.score_class_], y_idx]).astype(np.int64)
        return self

    def keep_classes(self, keep_idx: IntArray) -> SimilarityRejector:
        """Drop every class not in ``keep_idx`` (old indices, ascending) with its calibration scores."""
        new_index = np.full(len(self.counts_), -1, dtype=np.int64)
        new_index[keep_idx] = np.arange(len(keep_idx))
        kept = new_index[self.score_class_] >= 0
        self.sums_, self.counts_ = self.sums_[keep_idx], self.counts_[keep_idx]
        self.scores_, self.correct_ = self.scores_[kept], self.correct_[kept]
        self.score_class_ = new_index[self.score_class_[kept]]
        return self

    @property
    def means_(self) -> FloatArray:
        """Class means ``(C, D)`` of the normalised features."""
        out: FloatArray = self.sums_ / np.maximum(self.counts_, 1.0)[:, None]
        return out

    @property
    def center_(self) -> FloatArray:
        """Mean of the class means ``(D,)`` (balanced, so a large class does not dominate)."""
        out: FloatArray = self.means_.mean(axis=0)
        return out

    def cosines(self, Z: FloatArray) -> FloatArray:
        """Cosine ``(N, C)`` between centred samples and centred class means."""
        mu = self.center_
        out: FloatArray = _unit(Z - mu) @ _unit(self.means_ - mu).T
        return out

    def score(self, Z: FloatArray) -> FloatArray:
        """Similarity ``(N,)`` to the nearest class mean; low means unlike anything enrolled."""
        out: FloatArray = self.cosines(Z).max(axis=1)
        return out

    def _loo_scores(
        self, Z: FloatArray, y_idx: IntArray, groups: IntArray | None
    ) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
        g = np.arange(len(Z)) if groups is None else groups
        sims, valid = loo_cosines(Z, y_idx, self.sums_, self.counts_, g)
        self.loo_cosines_ = sims  # (N, C) transient (not saved): NCM's exact LOO scores, reused by AutoHead
        own = sims[np.arange(len(Z)), y_idx]
        correct = valid & (np.argmax(sims, axis=1) == y_idx)
        return np.where(valid, own, np.nan), correct

    @property
    def threshold_(self) -> float:
        """Score below which a query is unknown (see the module docstring for the calibration)."""
        valid = ~np.isnan(self.scores_)
        pick = self.correct_ if self.correct_.any() else valid
        if pick.any():
            return float(np.quantile(self.scores_[pick], self.quantile))
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
        rej.scores_, rej.correct_ = np.asarray(d["scores_"], np.float64), np.asarray(d["correct_"], bool)
        rej.score_class_ = np.asarray(d["score_class_"], np.int64)
        return rej
