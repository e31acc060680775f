"""What ``head.npz`` holds (format ``class-stats``, version 1) and the header check the bundle reader runs on
it before any array is read; :mod:`edgetl_runtime.bundle.shipped_head` turns the arrays into a prior."""

from __future__ import annotations

import numpy as np

from edgetl_runtime.bundle.manifest import Manifest
from edgetl_runtime.bundle.npz import ArrayHeader, expect_array
from edgetl_runtime.heads.prior import KEY_BYTES
from edgetl_runtime.limits import MAX_CLASSES

CLASS_STATS_FORMAT = "class-stats"
CLASS_STATS_VERSION = 1
HEAD_KIND = "class_stats"  # the ``kind`` array inside head.npz
FACTOR_DTYPE = np.float16
_FIX = "Fix: re-export the bundle (edgetl export --head-from DATA), or merge it again with edgetl merge."


def class_stats_problems(headers: dict[str, ArrayHeader], manifest: Manifest) -> list[str]:
    """Problems of a class-stats head.npz's array headers against the manifest (checked before any is read)."""
    dim = manifest.backbone.feature_dim
    classes = headers.get("classes")
    count = len(manifest.head_labels) or (classes.shape[0] if classes is not None and classes.shape else None)
    rows = headers.get("factors")
    k = rows.shape[0] if rows is not None and rows.shape else None
    counted = headers.get("counted_keys")
    n_counted = counted.shape[0] if counted is not None and counted.shape else None
    scores = headers.get("calib_scores")
    m = scores.shape[0] if scores is not None and scores.shape else None
    problems = [
        f"the head's features are {h.shape[1]} wide but the backbone's are {dim}: it was fitted for another "
        f"backbone or pooling. {_FIX}"
        for h in (headers.get("sums"), rows)
        if h is not None and len(h.shape) == 2 and h.shape[1] != dim
    ]
    expected: dict[str, tuple[str, tuple[int | None, ...]]] = {
        "kind": ("U", ()),
        "format_version": ("iu", ()),
        "classes": ("U", (count,)),
        "counts": ("f", (count,)),
        "sums": ("f", (count, dim)),
        "factors": ("f", (k, dim)),
        "factor_class": ("iu", (k,)),
        "residual": ("f", (count,)),
        "power": ("f", ()),
        "settings": ("U", ()),
        "calib_scores": ("f", (m,)),
        "calib_class": ("iu", (m,)),
        "counted_keys": ("u", (n_counted, KEY_BYTES)),
        "counted_class": ("iu", (n_counted,)),
    }
    if count is not None and count > MAX_CLASSES:  # before any array is read: 40k classes ran out of memory
        problems.append(f"the head has {count} classes, more than the {MAX_CLASSES} a device holds. {_FIX}")
    if not problems:
        for key, (kinds, shape) in expected.items():  # a head merged before counted_class existed lacks it
            problems += expect_array(headers, key, kinds, shape, required=key != "counted_class")
    return problems + [f"array {h.describe()} is not a head array" for key, h in headers.items() if key not in expected]
