"""Few-shot classification heads for the device: numpy only, fitted in milliseconds.

``NearestClassMean`` (SimpleShot), ``RidgeHead`` (closed form, exact leave-one-out),
``LogisticHead`` (L-BFGS in the span of the enrolled samples), ``AutoHead`` (picks one by
leave-one-out) and ``LDAHead`` (class-balanced ridge over class statistics). ``NearestClassMean`` and
``LDAHead`` also continue from a shipped :class:`Prior` (:func:`fit_with_prior`). Every head supports
``predict(X, reject=True)``, answering :data:`UNKNOWN` for samples unlike anything enrolled, and saves
to plain arrays with ``to_npz_dict``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime.errors import ConfigError, InputError, NotFittedError
from edgetl_runtime.heads.adapt import AdaptConfig
from edgetl_runtime.heads.adaptive import AdaptiveHead
from edgetl_runtime.heads.auto import AutoHead
from edgetl_runtime.heads.base import UNKNOWN, BaseHead
from edgetl_runtime.heads.lda import LDAHead
from edgetl_runtime.heads.logistic import LogisticHead
from edgetl_runtime.heads.ncm import NearestClassMean
from edgetl_runtime.heads.prior import Prior
from edgetl_runtime.heads.rejection import SimilarityRejector
from edgetl_runtime.heads.ridge import RidgeHead
from edgetl_runtime.heads.stats import ClassStats

HEADS: dict[str, type[BaseHead]] = {cls.kind: cls for cls in (NearestClassMean, RidgeHead, LogisticHead, LDAHead)}


def create_head(name: str = "auto", **params: Any) -> BaseHead | AutoHead:
    """A head by name: ``"auto"``, ``"adaptive"``, ``"ncm"``, ``"ridge"`` or ``"logistic"``, with its parameters."""
    if name == AutoHead.kind:
        return AutoHead(**params)
    if name == AdaptiveHead.kind:
        return AdaptiveHead(**params)
    if name not in HEADS:
        raise InputError(f"Unknown head {name!r}; choose one of {['auto', 'adaptive', *sorted(HEADS)]}.")
    return HEADS[name](**params)


def head_from_npz_dict(d: dict[str, npt.NDArray[Any]] | Any) -> BaseHead | AutoHead:
    """Rebuild any fitted head saved with ``to_npz_dict`` (dispatches on its stored ``kind``)."""
    if "kind" not in d:
        raise InputError("Saved head has no 'kind' entry; it was not written by a head's to_npz_dict().")
    kind = str(d["kind"])
    if kind == AutoHead.kind:
        return AutoHead.from_npz_dict(d)
    if kind == AdaptiveHead.kind:
        return AdaptiveHead.from_npz_dict(d)
    if kind not in HEADS:
        raise InputError(f"Saved head has unknown kind {kind!r}; this edgetl_runtime knows {['auto', *sorted(HEADS)]}.")
    return HEADS[kind].from_npz_dict(d)


def head_for_prior(name: str, prior: Prior, **params: Any) -> BaseHead:
    """The head ``name`` continuing from ``prior``.

    ``auto`` is the head the host measured best on held-out images (``prior.kind``): the device's own
    leave-one-out over a few shots cannot judge a head fitted on thousands. ``ridge`` is the same
    one-hot ridge objective as :class:`~edgetl_runtime.heads.ridge.RidgeHead` over the shipped samples and
    the enrolled ones, solved in the primal over their statistics (``LDAHead(class_weight=None)``).
    ``logistic`` is iterative over individual samples and cannot continue from statistics.
    """
    kind = prior.kind if name in ("auto", AdaptiveHead.kind) else name  # a shipped head: no adaptation (yet)
    if kind == "lda":
        return LDAHead(**{"class_weight": prior.class_weight, "power": prior.stats.power, **params})
    if kind == "ridge":
        return LDAHead(**{"class_weight": None, "power": prior.stats.power, **params})
    if kind == "ncm":
        return NearestClassMean(**{"power": prior.stats.power, **params})
    raise ConfigError(
        f"Head {name!r} cannot continue from a shipped head (it refits on individual samples, and the bundle ships "
        "statistics). Fix: use head='auto', 'lda', 'ridge' or 'ncm', or load with shipped_head=False to ignore it."
    )


def fit_with_prior(name: str, X: Any, y: Any, prior: Prior | None) -> BaseHead:
    """Fit head ``name`` on enrolled ``X``, ``y`` (either may be empty when a prior is given) and ``prior``."""
    if prior is None:
        if X is None or len(X) == 0:
            raise NotFittedError("No samples are enrolled; call add(images, label) for at least one class first.")
        head: BaseHead = create_head(name).fit(X, y)  # type: ignore[assignment]
        return head
    fitted: BaseHead = head_for_prior(name, prior).fit(X, y, prior=prior)  # type: ignore[call-arg]
    with np.errstate(all="ignore"):
        probe = fitted.predict_proba(prior.stats.means)  # (C, C): any finite input would do
    if not np.isfinite(probe).all():
        raise InputError(
            "The shipped head predicts NaN or infinite probabilities (its statistics or settings are degenerate). "
            "Fix: re-export the bundle (edgetl export --head-from DATA), or merge it again with edgetl merge."
        )
    return fitted


__all__ = [
    "HEADS",
    "UNKNOWN",
    "AdaptConfig",
    "AdaptiveHead",
    "AutoHead",
    "BaseHead",
    "ClassStats",
    "LDAHead",
    "LogisticHead",
    "NearestClassMean",
    "Prior",
    "RidgeHead",
    "SimilarityRejector",
    "create_head",
    "fit_with_prior",
    "head_for_prior",
    "head_from_npz_dict",
]
