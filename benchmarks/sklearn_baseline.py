"""scikit-learn's LogisticRegression as the few-shot baseline: a benchmark's comparison, not a product dependency.

`edgetl bench fewshot` and every installed package run without scikit-learn (a dev extra); scripts in
`benchmarks/` pass these to ``edgetl.bench.fewshot`` (``baselines=``, ``baseline_fits=``) to score the
same episodes and time the same fits against it.
"""

from __future__ import annotations

import numpy as np


def sklearn_lr_fit(x: np.ndarray, y: np.ndarray) -> object:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=1000).fit(x, y)


def sklearn_lr_predict(x: np.ndarray, y: np.ndarray, xt: np.ndarray) -> np.ndarray:
    return np.asarray(sklearn_lr_fit(x, y).predict(xt))  # type: ignore[attr-defined]


BASELINES = {"sklearn_lr": sklearn_lr_predict}
BASELINE_FITS = {"sklearn_lr": sklearn_lr_fit}
