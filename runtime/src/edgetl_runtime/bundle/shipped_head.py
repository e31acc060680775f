"""A bundle's shipped head, in the device heads' own terms: class statistics and the host's choices for them.

``head.npz`` (format ``class-stats``, version 1) holds a :class:`~edgetl_runtime.heads.prior.Prior`:
per-class counts, feature sums (float32) and scatter factor rows (float16, at most ``rank`` per class)
with their residual traces, the shrinkage, temperature and head the host chose on held-out images, and
a few rejection scores. The manifest's ``head`` section names the format and version, the labels and
counts, and the accuracy the host measured. Bundles of older edgetl versions ship ``kind="linear"``
(a fine-tuned layer's weights): a device cannot extend those, and ignores them with a warning.
"""

from __future__ import annotations

import unicodedata
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime.arguments import label_problem
from edgetl_runtime.bundle.head_format import _FIX, CLASS_STATS_FORMAT, CLASS_STATS_VERSION, FACTOR_DTYPE, HEAD_KIND
from edgetl_runtime.bundle.manifest import HEAD_NAME
from edgetl_runtime.errors import BundleError, InputError
from edgetl_runtime.heads.prior import Prior
from edgetl_runtime.limits import MAX_CLASSES

if TYPE_CHECKING:
    from edgetl_runtime.bundle.reader import Bundle


def head_npz_dict(prior: Prior) -> dict[str, npt.NDArray[Any]]:
    """The arrays of a class-stats ``head.npz`` (factors in float16: see :meth:`ClassStats.to_npz_dict`)."""
    return {
        "kind": np.array(HEAD_KIND),
        "format_version": np.array(CLASS_STATS_VERSION, dtype=np.int64),
        **prior.to_npz_dict(FACTOR_DTYPE),
    }


def head_section(prior: Prior, **extra: Any) -> dict[str, Any]:
    """The manifest's ``head`` entry for ``prior``: format, version, labels, counts, settings, plus ``extra``
    (``accuracy``, ``source``, ``merged``, ...)."""
    stats = prior.stats
    per_class = np.bincount(stats.factor_class, minlength=len(stats.classes))
    return {
        "format": CLASS_STATS_FORMAT,
        "format_version": CLASS_STATS_VERSION,
        "labels": [str(c) for c in stats.classes],
        "counts": stats.counts_by_label(),
        **prior.settings(),
        "power": stats.power,
        "feature_dim": stats.dim,
        "max_factor_rows": int(per_class.max()) if len(per_class) else 0,
        "factor_dtype": np.dtype(FACTOR_DTYPE).name,
        **extra,
    }


def read_prior(bundle: Bundle) -> Prior | None:
    """The bundle's shipped head as a :class:`Prior`, None if it ships none (or only an old linear head).

    Raises:
        BundleError: a head of an unknown format version, arrays that disagree with the manifest or the
            backbone's feature width, invalid or colliding labels, inconsistent statistics.
    """
    arrays = bundle.head_arrays()
    if arrays is None:
        return None
    info, where = bundle.manifest.head, f"{bundle.path} ({HEAD_NAME})"
    if info.get("format") != CLASS_STATS_FORMAT:
        warnings.warn(
            f"{where} ships a head of kind {str(arrays.get('kind', '?'))!r} from an older edgetl: a weight matrix "
            "the device cannot extend, so it is ignored and the device starts from its own enrolments. Fix: "
            "re-export the bundle with this edgetl, which ships class statistics.",
            stacklevel=2,
        )
        return None
    version = info.get("format_version")
    stored = arrays["format_version"]
    if type(version) is not int or version != CLASS_STATS_VERSION or int(stored) != version:
        raise BundleError(
            f"{where} has head format version {version!r} (arrays say {int(stored)}); this edgetl-runtime reads "
            f"version {CLASS_STATS_VERSION}. Fix: upgrade edgetl-runtime, or re-export the bundle with a matching "
            "edgetl."
        )
    if str(arrays["kind"]) != HEAD_KIND:
        raise BundleError(f"{where} holds kind {str(arrays['kind'])!r}, expected {HEAD_KIND!r}. {_FIX}")
    try:
        prior = Prior.from_npz_dict(arrays)
    except InputError as exc:
        raise BundleError(f"{where} is inconsistent: {exc} {_FIX}") from None
    problems = value_problems(prior) + label_collisions([str(c) for c in prior.classes])
    labels = tuple(str(c) for c in prior.classes)
    if labels != bundle.manifest.head_labels or info.get("labels") != list(labels):
        problems.append(f"its classes {list(labels)[:10]} differ from the manifest's head_labels / head.labels")
    if info.get("counts") != prior.stats.counts_by_label():
        problems.append("its per-class counts differ from the manifest's head.counts")
    if problems:
        raise BundleError(f"{where} cannot be used: " + "; ".join(problems) + f". {_FIX}")
    return prior


# What a real head can hold (issue 24, item 6): alpha 1e-300, counts 1e-300 or power 1e300 were positive and
# finite, and made every probability NaN. The host's grids lie far inside these bounds.
ALPHA_RANGE = (1e-6, 1e3)  # LDA shrinkage; the host's grid is 1e-4..1
TEMPERATURE_RANGE = (1e-3, 1e3)  # softmax temperature; the host's grid is 0.02..1
POWER_RANGE = (0.05, 4.0)  # the feature transform's exponent: 0.5 or 1 in practice
MAX_CLASS_COUNT = 2.0**40  # samples per class


def value_problems(prior: Prior) -> list[str]:
    """Values a real shipped head cannot hold. Features are L2-normalised before they are summed, so a class of
    n samples has a sum of norm <= n and a scatter trace (factor rows and residual) <= n."""
    stats, problems = prior.stats, []
    for name, value, (low, high) in (
        ("alpha", prior.alpha, ALPHA_RANGE),
        ("temperature", prior.temperature, TEMPERATURE_RANGE),
        ("power", stats.power, POWER_RANGE),
    ):
        if not low <= value <= high:
            problems.append(f"{name} {value:.3g} is outside [{low:g}, {high:g}]")
    if len(stats.classes) > MAX_CLASSES:
        problems.append(f"it has {len(stats.classes)} classes, more than the {MAX_CLASSES} a device holds")
    counts = stats.counts
    if not (np.all(counts >= 1) and np.all(counts <= MAX_CLASS_COUNT)):
        problems.append(f"class counts must be numbers of samples in [1, {MAX_CLASS_COUNT:g}]")
        return problems
    slack = 1.01  # float32 sums and float16 factors round
    if np.any(np.linalg.norm(stats.sums, axis=1) > slack * counts + 1e-3):
        problems.append("a class sum is longer than its count of unit-length features allows")
    trace = np.bincount(stats.factor_class, np.einsum("kd,kd->k", stats.factors, stats.factors), len(counts))
    if np.any(trace + stats.residual > slack * counts + 1e-3):
        problems.append("a class scatter is larger than its count of unit-length features allows")
    if len(prior.calib_scores) and np.abs(prior.calib_scores).max() > 1.0 + 1e-3:
        problems.append("rejection scores are cosines and must lie in [-1, 1]")
    return problems


def label_collisions(labels: list[str]) -> list[str]:
    """Labels that break the label rule, are not stored NFC, or collide with another once NFC-normalised."""
    problems = [f"label {v!r}: {p}" for v, p in ((v, label_problem(v)) for v in labels) if p]
    seen: dict[str, str] = {}
    for value in labels:
        norm = unicodedata.normalize("NFC", value)
        if norm != value:
            problems.append(f"label {value!r} is not NFC-normalised (a device stores it as {norm!r})")
        if norm in seen and seen[norm] != value:
            problems.append(f"labels {seen[norm]!r} and {value!r} are one class once NFC-normalised")
        seen.setdefault(norm, value)
    return problems
