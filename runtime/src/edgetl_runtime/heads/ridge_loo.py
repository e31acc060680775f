"""Exact leave-one-out for the dual ridge head, over a whole alpha grid at once, and its softmax temperature.

With N enrolled samples much fewer than D features, everything lives in the N x N kernel ``K = Z Z^T``:
leave-one-out over every alpha is one batch of N x N inverses (one eigendecomposition beyond
``SMALL_KERNEL``); :class:`edgetl_runtime.heads.ridge.RidgeHead` fits and enrols on top of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime.errors import InputError
from edgetl_runtime.heads.base import FloatArray, IntArray

DEFAULT_ALPHAS = (0.1, 0.3, 1.0, 3.0, 10.0)  # features are unit-norm, so K_ii = 1 sets the scale
FALLBACK_ALPHA = 0.3  # used when leave-one-out cannot score anything (one sample per class)
FALLBACK_TEMPERATURE = 0.1
TEMPERATURES = (0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


def _group_index(groups: Any, n: int) -> IntArray:
    if groups is None:
        return np.arange(n, dtype=np.int64)
    g = np.asarray(groups).ravel()
    if len(g) != n:
        raise InputError(f"groups has {len(g)} entries but X has {n} samples; pass one group id per sample.")
    return np.unique(g, return_inverse=True)[1].ravel().astype(np.int64)


def _blocks_by_size(groups: IntArray) -> list[IntArray]:
    """Sample indices grouped as one ``(G, m)`` array per group size m (vectorised hold-outs)."""
    order = np.argsort(groups, kind="stable")
    blocks = np.split(order, np.flatnonzero(np.diff(groups[order])) + 1)
    sizes = np.array([len(b) for b in blocks])
    return [np.stack([b for b, m in zip(blocks, sizes, strict=True) if m == size]) for size in np.unique(sizes)]


def loo_scorable(y_idx: IntArray, groups: IntArray, n_classes: int) -> npt.NDArray[np.bool_]:
    """Samples whose class keeps another group when their group is held out (LOO can score them)."""
    if len(groups) and int(np.bincount(groups).max()) == 1:  # one sample per group: count samples
        per_class = np.bincount(y_idx, minlength=n_classes)
    else:
        pairs = np.unique(np.stack([y_idx, groups], axis=1), axis=0)
        per_class = np.bincount(pairs[:, 0], minlength=n_classes)
    out: npt.NDArray[np.bool_] = per_class[y_idx] >= 2
    return out


def gram(Z: FloatArray) -> npt.NDArray[np.float64]:
    """``Z Z^T`` as float64, multiplied in ``Z``'s own precision (float32 features: twice as fast)."""
    out: npt.NDArray[np.float64] = (Z @ Z.T).astype(np.float64, copy=False)
    return out


def centered_kernel(K: FloatArray) -> FloatArray:
    """Double-centred kernel ``Zc Zc^T`` from ``K = Z Z^T`` in O(N^2), without centring Z."""
    r = K.sum(axis=0) * (1.0 / len(K))  # (N,) K is symmetric: row and column means agree
    out: FloatArray = K - r[:, None] - r[None, :] + r.sum() * (1.0 / len(K))
    return out


def shifted_inverses(Kc: FloatArray, alphas: Any) -> FloatArray:
    """``(Kc + alpha I)^-1`` for every alpha, ``(A, N, N)``, for a symmetric PSD ``Kc``.

    A 2 x 2 block (Schur complement) inverse batched over the alphas: on N ~ 50 it is 2.5x faster
    than one eigendecomposition (LAPACK's overhead dominates at this size) and exact to ~1e-15. The
    Schur complement of an SPD matrix is SPD, so the blocks are as well conditioned as the whole.
    """
    n = len(Kc)
    shift = np.asarray(alphas, dtype=np.float64)[:, None, None]
    if n < 16:
        out: FloatArray = np.linalg.inv(Kc + shift * np.eye(n))
        return out
    h = n // 2
    K12 = Kc[:h, h:]
    inv11 = np.linalg.inv(Kc[:h, :h] + shift * np.eye(h))  # (A, h, h)
    inv11_K12 = inv11 @ K12  # (A, h, n - h)
    schur_inv = np.linalg.inv(Kc[h:, h:] + shift * np.eye(n - h) - K12.T @ inv11_K12)  # (A, n - h, n - h)
    upper_right = -inv11_K12 @ schur_inv
    out = np.empty((len(shift), n, n))
    out[:, :h, :h] = inv11 - upper_right @ inv11_K12.transpose(0, 2, 1)
    out[:, :h, h:] = upper_right
    out[:, h:, :h] = upper_right.transpose(0, 2, 1)
    out[:, h:, h:] = schur_inv
    return out


def ridge_loo(
    Kc: FloatArray, Y: FloatArray, alphas: Any, groups: IntArray | None = None
) -> tuple[FloatArray, FloatArray]:
    """Exact leave-one-(group-)out decisions ``(A, N, C)`` of ridge with a free intercept, and the dual
    coefficients ``(A, N, C)`` of the full fit, from the centred kernel ``Kc``.

    With ``M = (Kc + alpha I)^-1`` the dual coefficients are ``M (Y - mean Y)``, the in-sample residual
    is ``alpha M (Y - mean Y)`` and ``I - H = alpha M - 11^T/N`` (the intercept is unpenalised), so the
    held-out residual of group g is ``(alpha M_gg - 11^T/N)^-1 r_g``: one division per sample when
    every group is a single sample.
    """
    n = len(Y)
    a = np.asarray(alphas, dtype=np.float64)
    R = Y - Y.sum(axis=0) * (1.0 / n)
    dual, diag, blocks = _shifted_inverse_terms(Kc, a, R)
    resid = a[:, None, None] * dual  # (A, N, C) in-sample residuals
    if groups is None or int(np.bincount(groups).max()) == 1:  # (y - yhat) / (1 - h_ii)
        one_minus_h = a[:, None] * diag - 1.0 / n  # (A, N)
        loo: FloatArray = Y - resid / np.maximum(one_minus_h, 1e-12)[:, :, None]
        return loo, dual
    resid = resid.copy()
    for idx in _blocks_by_size(groups):  # (G, m) rows of the G groups of size m
        m = idx.shape[1]
        I_H = a[:, None, None, None] * blocks(idx) - 1.0 / n  # (A, G, m, m)
        if m == 1:
            resid[:, idx[:, 0]] /= np.maximum(I_H[:, :, 0, 0], 1e-12)[:, :, None]
        else:
            resid[:, idx] = np.linalg.pinv(I_H, rcond=1e-10) @ resid[:, idx]  # held-out (I - H_gg)^-1 r_g
    return Y - resid, dual


SMALL_KERNEL = 256  # up to this N, batched inverses (fast, A N^2 memory); beyond, one eigendecomposition


def _shifted_inverse_terms(
    Kc: FloatArray, alphas: FloatArray, R: FloatArray
) -> tuple[FloatArray, FloatArray, Callable[[IntArray], FloatArray]]:
    """``M R`` (A, N, C), ``diag M`` (A, N) and a reader of the blocks ``M[idx, idx]`` (A, G, m, m) for
    ``M = (Kc + alpha I)^-1`` at every alpha.

    Small N: the inverses themselves (:func:`shifted_inverses`). Large N: one eigendecomposition
    ``Kc = U S U^T`` serves every alpha, ``M = U (S + alpha)^-1 U^T``, and nothing A x N x N is stored.
    """
    if len(Kc) <= SMALL_KERNEL:
        M = shifted_inverses(Kc, alphas)  # (A, N, N)
        return M @ R, np.einsum("aii->ai", M), lambda idx: M[:, idx[:, :, None], idx[:, None, :]]
    s, U = np.linalg.eigh(Kc)
    inv = 1.0 / (np.maximum(s, 0.0)[None, :] + alphas[:, None])  # (A, N)
    dual = U @ (inv[:, :, None] * (U.T @ R)[None])  # (A, N, C)
    diag = inv @ (U * U).T  # (A, N)
    return dual, diag, lambda idx: np.einsum("gik,ak,gjk->agij", U[idx], inv, U[idx])


def ridge_loo_decisions(
    Z: FloatArray, Y: FloatArray, alphas: Any, groups: IntArray | None = None, kernel: FloatArray | None = None
) -> FloatArray:
    """Exact leave-one-(group-)out decision values ``(len(alphas), N, C)`` of ridge with a free intercept
    on features ``Z`` (see :func:`ridge_loo`); ``kernel`` is ``Z Z^T`` if already computed."""
    return ridge_loo(centered_kernel(gram(Z) if kernel is None else kernel), Y, alphas, groups)[0]


def select_alpha(loo: FloatArray, y_idx: IntArray, scored: npt.NDArray[np.bool_], alphas: tuple[float, ...]) -> int:
    """Index of the alpha minimising the LOO squared error (PRESS) over the ``scored`` samples.

    ``loo`` is ``(A, N, C)`` held-out decisions. PRESS is the loss ridge itself minimises, it is
    smooth on a handful of samples (unlike LOO accuracy) and needs no exponentials: choosing alpha
    jointly with the temperature by LOO log-loss cost 5x more for the same accuracy on Fashion-MNIST
    (``benchmarks/bench_heads.py``). With nothing to score (one sample per class) it returns the grid
    point nearest :data:`FALLBACK_ALPHA`.
    """
    if not scored.any():
        return int(np.argmin(np.abs(np.log(alphas) - np.log(FALLBACK_ALPHA))))
    d = loo if scored.all() else loo[:, scored, :]  # (A, n, C)
    own = d[:, np.arange(d.shape[1]), y_idx[scored]]  # (A, n)
    press = np.einsum("anc,anc->a", d, d) - 2.0 * own.sum(axis=1)  # ||d - Y||^2 minus a constant
    return int(np.argmin(press))


def loo_temperature(decision: FloatArray, own: IntArray) -> float:
    """The grid temperature minimising the mean log-loss of ``softmax(decision / T)`` for labels ``own``.

    ``decision`` holds the LOO decisions ``(n, C)`` of the scored samples; with none it returns
    :data:`FALLBACK_TEMPERATURE`.
    """
    if not len(decision):
        return FALLBACK_TEMPERATURE
    # Shifting by the max commutes with every T > 0. float32: the grid's log-losses differ by far more
    # than its rounding, and its exp is ~1.5x faster (this runs once per fit that needs probabilities).
    d = (decision - decision.max(axis=1, keepdims=True)).astype(np.float32)
    inv_t = (1.0 / np.asarray(TEMPERATURES)).astype(np.float32)
    lse = np.log(np.exp(d[None] * inv_t[:, None, None]).sum(axis=2)).mean(axis=1)  # (T,)
    nll = lse - d[np.arange(len(d)), own].mean() * inv_t
    return float(TEMPERATURES[int(np.argmin(nll))])
