"""Class prototypes refined from the unlabelled images the device has already seen (anchored soft k-means).

The device caches the features of every image it predicted. Those images come from the same world as the
enrolled shots, so a few rounds of soft k-means over them, with the labelled shots anchoring each class,
find where each class really lies: with one shot per class that is worth about ten points of accuracy on
Fashion-MNIST (``benchmarks/bench_adapt.py``). The algorithm, on power-transformed unit features:

1. Centre every vector by the mean of shots and seen images together, re-normalise (SimpleShot's CL2N).
2. Prototypes start as the normalised class sums of the centred shots.
3. Each round: responsibilities ``r = softmax(cos(u, p_c) / temperature + log pi_c)`` of every seen image;
   the class proportions ``pi`` are re-estimated from them (EM for the mixing weights: a stream dominated by
   one class lets that class absorb its own images instead of pushing them into its neighbours); prototypes
   become the normalised sum of the anchoring shots and the responsibility-weighted seen images.
4. The result is, per class, the responsibility-weighted mean of the seen images alone (uncentred, in the
   heads' feature space) and its mass, so that a caller can add it as one extra sample per class and judge
   it on the shots by leave-one-out without the shots having voted for themselves.

Cost: two passes over the ``(M, D)`` seen rows per round (``U @ P^T``, ``R^T @ U``; the last round's second
pass forms only the means), nothing ``M x M``: the
rows arrive transformed, distinct and finite, with their sum, from a
:class:`~edgetl_runtime.heads.seen_pool.SeenPool`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime.errors import ConfigError

FloatArray = npt.NDArray[np.floating[Any]]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class AdaptConfig:
    """How the head adapts to the seen images.

    Args:
        rounds: soft k-means rounds (stops earlier when responsibilities move by less than ``tol``). One round
            (one EM step from the shots' prototypes) is the default: on Fashion-MNIST (10 seeds) it gains about as
            much as 2-6 rounds on average (+7.5 / +2.0 points at K = 1 / 5, balanced stream) and is far safer on
            streams that mislead: the worst episode of an imbalanced stream lost 0.6 points with 1 round, 3.6 with
            2, 5.2 with 3 and 8.6 with 6 (further rounds let a dominant class capture its neighbours' clusters).
        temperature: of the responsibilities, on centred cosines in [-1, 1].
        min_seen: fewer distinct usable seen images than this (or than 2 per class) and nothing is adapted.
        min_mass: a class whose seen images weigh less than this gets no prototype.
        margin: the adapted head's leave-one-out accuracy on the shots may trail the labelled-only head's by
            this much and still be kept (LOO on ~50 shots has a standard error of ~6 points).
        min_loo: with one shot per class the labelled-only head has no leave-one-out accuracy; the adapted head
            is kept when its own (each shot classified with the shot held out) reaches this.
        max_seen: at most this many seen images are used, the newest (the Learner keeps no more in memory: 1000
            x D x 4 bytes, 46 MB for the default Lite0 export; 1000 seen images gave the figures of
            ``benchmarks/bench_adapt.py``).
    """

    rounds: int = 1
    temperature: float = 0.05
    min_seen: int = 20
    min_mass: float = 1.0
    margin: float = 0.02
    min_loo: float = 0.5
    max_seen: int = 1000
    tol: float = 1e-3

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.rounds, int) and self.rounds >= 1):
            problems.append(f"rounds must be an int >= 1, got {self.rounds!r}")
        if not self.temperature > 0:
            problems.append(f"temperature must be > 0, got {self.temperature!r}")
        if not (isinstance(self.min_seen, int) and self.min_seen >= 1):
            problems.append(f"min_seen must be an int >= 1, got {self.min_seen!r}")
        if not (isinstance(self.max_seen, int) and self.max_seen >= self.min_seen):
            problems.append(f"max_seen must be an int >= min_seen, got {self.max_seen!r}")
        if not 0.0 <= self.min_loo <= 1.0 or not 0.0 <= self.margin <= 1.0:
            problems.append(f"min_loo and margin must lie in [0, 1], got {self.min_loo!r}, {self.margin!r}")
        if not self.min_mass >= 0 or not self.tol > 0:
            problems.append(f"min_mass must be >= 0 and tol > 0, got {self.min_mass!r}, {self.tol!r}")
        if problems:
            raise ConfigError("Invalid AdaptConfig: " + "; ".join(problems) + ".")


@dataclass(frozen=True)
class StreamPrototypes:
    """Per class: the responsibility-weighted mean of the seen images (``(C, D)``, unit rows, heads' space) and
    its mass ``(C,)``; ``used`` seen images, ``rounds`` run, ``proportions`` the estimated class shares, and
    ``seen_mean`` the plain mean of the seen images (the rejection's background)."""

    means: FloatArray
    mass: FloatArray
    used: int
    rounds: int
    proportions: FloatArray
    seen_mean: FloatArray


def _unit(A: FloatArray) -> FloatArray:
    out: FloatArray = A / np.maximum(np.linalg.norm(A, axis=-1, keepdims=True), 1e-12)
    return out


def stream_prototypes(
    Zs: FloatArray, y_idx: IntArray, n_classes: int, U: FloatArray, seen_sum: FloatArray, config: AdaptConfig
) -> StreamPrototypes:
    """Anchored soft k-means (module docstring) of unit seen rows ``U`` (M, D), whose sum is ``seen_sum``
    (:class:`~edgetl_runtime.heads.seen_pool.SeenPool` keeps it), around unit shots ``Zs``."""
    n_shots = len(Zs)
    seen_sum = np.asarray(seen_sum, dtype=np.float64)
    mu = (Zs.sum(axis=0, dtype=np.float64) + seen_sum) / (n_shots + len(U))  # (D,)
    onehot = np.zeros((n_classes, n_shots))
    onehot[y_idx, np.arange(n_shots)] = 1.0
    anchors = onehot @ _unit(Zs - mu)  # (C, D) sums of centred unit shots
    counts = onehot.sum(axis=1)
    protos = _unit(anchors)
    # One pass gives the first round's products and u . mu (|u - mu| without a centred (M, D) copy: |u| = 1).
    first = (U @ np.vstack([protos, mu]).astype(U.dtype).T).astype(np.float64)  # (M, C + 1)
    dots, u_norm = first[:, :-1], np.sqrt(np.maximum(1.0 - 2.0 * first[:, -1] + mu @ mu, 1e-12))
    log_pi = np.full(n_classes, -np.log(n_classes))
    resp = np.zeros((len(U), n_classes))
    rounds = 0
    while True:
        rounds += 1
        logits = (dots - mu @ protos.T) / u_norm[:, None] / config.temperature + log_pi  # centred cosines
        logits -= logits.max(axis=1, keepdims=True)
        new = np.exp(logits)
        new /= new.sum(axis=1, keepdims=True)
        moved = float(np.abs(new - resp).max())
        resp = new
        share = resp.sum(axis=0) + counts  # (C,) mixing weights, the shots counting as certain members
        log_pi = np.log(np.maximum(share / share.sum(), 1e-6))
        if moved < config.tol or rounds >= config.rounds:  # the last round needs the means alone
            means = _unit((resp.T.astype(U.dtype) @ U).astype(np.float64))  # (C, D) uncentred: the heads' space
            break
        w = resp / u_norm[:, None]  # (M, C): weights of the centred unit seen images
        both = (np.hstack([w, resp]).T.astype(U.dtype) @ U).astype(np.float64)  # (2C, D): one pass
        protos = _unit(anchors + both[:n_classes] - w.sum(axis=0)[:, None] * mu)
        dots = (U @ protos.astype(U.dtype).T).astype(np.float64)  # (M, C)
    mass = resp.sum(axis=0)
    return StreamPrototypes(means, mass, len(U), rounds, np.exp(log_pi), seen_sum / max(len(U), 1))
