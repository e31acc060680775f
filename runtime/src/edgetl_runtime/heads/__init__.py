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

import numpy.typing as npt

from edgetl_runtime.errors import InputError
from edgetl_runtime.heads.auto import AutoHead
from edgetl_runtime.heads.base import UNKNOWN, BaseHead
from edgetl_runtime.heads.lda import LDAHead
from edgetl_runtime.heads.logistic import LogisticHead
from edgetl_runtime.heads.ncm import NearestClassMean
from edgetl_runtime.heads.prior import Prior, fit_with_prior, head_for_prior
from edgetl_runtime.heads.rejection import SimilarityRejector
from edgetl_runtime.heads.ridge import RidgeHead
from edgetl_runtime.heads.stats import ClassStats

HEADS: dict[str, type[BaseHead]] = {cls.kind: cls for cls in (NearestClassMean, RidgeHead, LogisticHead, LDAHead)}


def create_head(name: str = "auto", **params: Any) -> BaseHead | AutoHead:
    """A head by name: ``"auto"``, ``"ncm"``, ``"ridge"`` or ``"logistic"``, with its parameters."""
    if name == AutoHead.kind:
        return AutoHead(**params)
    if name not in HEADS:
        raise InputError(f"Unknown head {name!r}; choose one of {['auto', *sorted(HEADS)]}.")
    return HEADS[name](**params)


def head_from_npz_dict(d: dict[str, npt.NDArray[Any]] | Any) -> BaseHead | AutoHead:
    """Rebuild any fitted head saved with ``to_npz_dict`` (dispatches on its stored ``kind``)."""
    if "kind" not in d:
        raise InputError("Saved head has no 'kind' entry; it was not written by a head's to_npz_dict().")
    kind = str(d["kind"])
    if kind == AutoHead.kind:
        return AutoHead.from_npz_dict(d)
    if kind not in HEADS:
        raise InputError(f"Saved head has unknown kind {kind!r}; this edgetl_runtime knows {['auto', *sorted(HEADS)]}.")
    return HEADS[kind].from_npz_dict(d)


__all__ = [
    "HEADS",
    "UNKNOWN",
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
