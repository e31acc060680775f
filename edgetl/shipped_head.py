"""The host's side of a shipped head: class statistics of the bundle's own fp32 features of labelled images.

The host computes features with the bundle's fp32 ONNX member (exactly what a device's fp32 backend
computes), holds out a class-stratified part of the images, fits class statistics on the rest, and on
the held-out part chooses the head (``lda`` at one of :data:`ALPHAS`, or ``ncm``), the softmax
temperature and the rejection calibration, and measures the accuracy it records in the manifest. The
head it ships is the one it measured (fitted on the fit part only), after the same float16 rounding
the device reads, so the manifest's accuracy is that of the shipped head and nothing else.

Sizes (``rank`` 16, float16 factors, float32 sums): ``C (16 D 2 + D 4)`` bytes, 41 KB per class at
D = 1280 (205 KB for 5 classes, 5.4 % of the 3.8 MB int8 Lite0 member); 369 KB per class at the
11520-wide grid3 pooling. A dense D x D scatter would be 6.6 MB (D = 1280) or 531 MB (11520) per class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime.bundle.manifest import Precision
from edgetl_runtime.bundle.shipped_head import head_npz_dict, head_section, label_collisions
from edgetl_runtime.errors import ConfigError, DatasetError
from edgetl_runtime.heads import ClassStats, LDAHead, NearestClassMean, Prior
from edgetl_runtime.heads.prior import key_prefixes
from edgetl_runtime.heads.ridge import TEMPERATURES, loo_temperature
from edgetl_runtime.preprocess import PreprocessSpec, preprocess_batch

if TYPE_CHECKING:
    from edgetl.backbones import Backbone
    from edgetl.datasets import ImageDataset

ALPHAS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1)  # balanced LDA shrinkage; Lite0 / Fashion-MNIST peaked at 1e-3..3e-3
NCM_MARGIN = 0.5  # accuracy points NCM must win by: it ignores the scatter, so it extends to few-shot classes worse
CALIB_PER_CLASS = 32  # rejection scores shipped per class (quantiles of the held-out correct ones)


@dataclass(frozen=True)
class HeadConfig:
    """How the host fits the head it ships.

    Attributes:
        rank: scatter directions kept per class (the rest of its trace becomes isotropic shrinkage).
        per_class: at most this many labelled images per class (each costs one fp32 backbone run).
        holdout: fraction of each class held out to choose the head and measure its accuracy.
        alphas: the LDA shrinkage grid.
        seed: the draw of ``per_class`` images and of the hold-out.
    """

    rank: int = 16
    per_class: int = 500
    holdout: float = 0.2
    alphas: tuple[float, ...] = ALPHAS
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        if self.rank < 1 or self.per_class < 2 or not 0.0 < self.holdout < 1.0 or not self.alphas:
            raise ConfigError(
                f"HeadConfig needs rank >= 1, per_class >= 2, 0 < holdout < 1 and some alphas; got rank={self.rank}, "
                f"per_class={self.per_class}, holdout={self.holdout}, alphas={self.alphas}."
            )
        if any(not a > 0 for a in self.alphas):
            raise ConfigError(f"alphas must be > 0, got {self.alphas}.")


@dataclass(frozen=True)
class ShippedHead:
    """What goes into a bundle: ``head.npz`` bytes, the manifest's ``head`` section, and the prior itself."""

    prior: Prior
    section: dict[str, Any]
    arrays: dict[str, npt.NDArray[Any]]


def member_features(model: bytes, spec: PreprocessSpec, images: Any, batch: int = 64) -> npt.NDArray[np.float32]:
    """``(N, D)`` features of ``images`` from an ONNX member (onnxruntime, the device's own preprocessing)."""
    from edgetl_runtime.backends.onnxruntime import make_session

    session = make_session(model)
    name = session.get_inputs()[0].name
    chunks = [
        session.run(None, {name: preprocess_batch(list(images[i : i + batch]), spec)})[0]
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(chunks).astype(np.float32)


def fit_shipped_head(
    features: npt.NDArray[np.floating[Any]],
    labels: list[str],
    config: HeadConfig | None = None,
    *,
    source: str = "caller's images",
    linear: tuple[npt.NDArray[Any], npt.NDArray[Any], list[str]] | None = None,
    precisions: dict[str, Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float32]]] | None = None,
    keys: list[str] | None = None,
) -> ShippedHead:
    """Fit, choose and measure the shipped head on labelled ``features`` (N, D) (see the module docstring).

    Args:
        features: the bundle's fp32 features of the labelled images.
        labels: one class name per row.
        config: rank, hold-out and shrinkage grid.
        source: how the manifest names the images.
        linear: a fine-tuned run's own classifier ``(weight (C, D), bias (C,), classes)``, whose held-out
            accuracy on the same images is recorded beside the shipped head's.
        precisions: for each other precision the bundle ships, a function giving the features of the images
            at the given indices through that member: the head's held-out accuracy is recorded per precision,
            so a device compares its own figure with the host's for the very model it runs.
        keys: the device's enrolment key of each row's image (``ImageDataset.image_keys``): the head records
            those of the images it is fitted on (``counted_keys``, as a merged head does), so a device that
            enrols one of them again sees it as enrolled and does not count it twice.
    """
    config = config or HeadConfig()
    y = np.asarray(labels, dtype=str)
    check_head_classes(sorted(set(y.tolist())))
    fit_idx, val_idx = _holdout(y, config)
    fitted_stats = ClassStats.from_features(features[fit_idx], y[fit_idx], rank=config.rank)
    # Round-trip through the shipped float16 form first: what is measured is what ships.
    shipped = Prior.from_npz_dict(head_npz_dict(Prior(fitted_stats, 1.0, 1.0))).stats
    X_val, y_val = features[val_idx], y[val_idx]
    by_alpha = {}
    for alpha in config.alphas:
        head = LDAHead(alpha=alpha).fit(None, None, prior=Prior(shipped, alpha, 0.1))
        by_alpha[alpha] = _accuracy(head.predict(X_val), y_val)
    alpha = max(config.alphas, key=lambda a: (by_alpha[a], -abs(np.log(a / 3e-3))))  # ties: nearest the middle
    ncm = NearestClassMean().fit(None, None, prior=Prior(shipped, alpha, 0.1))
    ncm_acc = _accuracy(ncm.predict(X_val), y_val)
    kind = "ncm" if ncm_acc > by_alpha[alpha] + NCM_MARGIN else "lda"
    chosen = ncm if kind == "ncm" else LDAHead(alpha=alpha).fit(None, None, prior=Prior(shipped, alpha, 0.1))
    Z_val = chosen._transform(chosen._check_X(X_val))
    own = np.searchsorted(chosen.classes_, y_val)
    # LDA's decisions are one-hot regressions: its softmax temperature is chosen by held-out log-loss. NCM's
    # logits are cosines over its own fixed temperature parameter, which the prior leaves alone.
    lda_t = loo_temperature(chosen._decision(Z_val), own) if kind == "lda" else float(ncm.temperature)
    calib_scores, calib_class = _calibration(chosen, Z_val, own)
    counted = key_prefixes([keys[int(i)] for i in fit_idx]) if keys is not None else key_prefixes([])
    # each counted image under the class it was counted for: a device skips it only under that label
    counted_class = np.searchsorted(shipped.classes, y[fit_idx]) if keys is not None else np.zeros(0, np.int64)
    prior = Prior(
        shipped,
        alpha,
        float(lda_t),
        kind,
        "balanced",
        calib_scores,
        calib_class,
        counted,
        counted_class.astype(np.int64),
    )
    predicted = chosen.predict(X_val)
    accuracy: dict[str, Any] = {
        "top1": _accuracy(predicted, y_val),
        "images": len(val_idx),
        "precision": "fp32",
        "split": f"held-out {config.holdout:.0%} of each class (seed {config.seed}); the shipped head is fitted "
        "on the rest",
        "per_class": {str(c): _accuracy(predicted[y_val == c], y_val[y_val == c]) for c in np.unique(y_val)},
        "lda_by_alpha": {f"{a:g}": v for a, v in by_alpha.items()},
        "ncm": ncm_acc,
    }
    accuracy["by_precision"] = {"fp32": accuracy["top1"]}
    for name, features_of in (precisions or {}).items():
        accuracy["by_precision"][name] = _accuracy(chosen.predict(features_of(val_idx)), y_val)
    if linear is not None:
        W, b, classes = linear
        scores = np.asarray(X_val, dtype=np.float64) @ np.asarray(W, dtype=np.float64).T + np.asarray(b)
        accuracy["linear_head"] = _accuracy(np.asarray(classes)[np.argmax(scores, axis=1)], y_val)
    fitted: dict[str, Any] = {"images": len(fit_idx), "image_keys_recorded": len(counted), "rank": config.rank}
    fitted.update({"alphas": list(config.alphas), "temperatures": TEMPERATURES})
    section = head_section(prior, accuracy=accuracy, source=source, fitted=fitted)
    return ShippedHead(prior, section, head_npz_dict(prior))


def check_head_classes(classes: list[str]) -> None:
    """Refuse class names a device cannot hold as labels, or that collide once NFC-normalised (export checks this
    before any backbone run)."""
    problems = label_collisions(list(classes))
    if problems:
        raise DatasetError(
            "The head's class names cannot be device labels: " + "; ".join(problems[:5]) + ". Fix: rename the class "
            "folders (one spelling per class; macOS can store a folder name decomposed)."
        )


def _holdout(y: npt.NDArray[np.str_], config: HeadConfig) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Class-stratified fit / held-out indices from at most ``per_class`` images per class."""
    rng = np.random.default_rng(config.seed)
    fit, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))[: config.per_class]
        if len(idx) < 2:
            raise DatasetError(
                f"Class {c!r} has {len(idx)} labelled image(s); a shipped head needs at least 2 per class (one to fit, "
                "one to measure). Fix: add images of that class, or leave it out of --head-from."
            )
        n_val = min(len(idx) - 1, max(1, round(config.holdout * len(idx))))
        val.append(idx[:n_val])
        fit.append(idx[n_val:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))


def _calibration(
    head: Any, Z_val: npt.NDArray[Any], own: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Quantiles of each class's held-out rejection similarities among correctly classified images."""
    cos = head.rejector_.cosines(Z_val)  # (N, C)
    correct = np.argmax(cos, axis=1) == own
    return calibration_quantiles(cos[np.arange(len(own)), own], own, correct, cos.shape[1])


def calibration_quantiles(
    scores: npt.NDArray[Any], owner: npt.NDArray[np.int64], correct: npt.NDArray[np.bool_], n_classes: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """At most ``CALIB_PER_CLASS`` evenly spaced quantiles of each class's scores among correctly classified
    samples (what a shipped head keeps to calibrate rejection), with the class of each."""
    picked, classes = [], []
    for c in range(n_classes):
        mine = scores[correct & (owner == c)]
        if len(mine):
            picks = np.quantile(mine, np.linspace(0, 1, min(CALIB_PER_CLASS, len(mine))))
            picked.append(picks)
            classes.append(np.full(len(picks), c, dtype=np.int64))
    if not picked:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(picked).astype(np.float64), np.concatenate(classes)


def _accuracy(predicted: npt.NDArray[Any], truth: npt.NDArray[Any]) -> float:
    return round(float(np.mean(np.asarray(predicted) == truth)), 6) if len(truth) else float("nan")


def head_for_bundle(
    backbone: Backbone,
    members: dict[str, bytes],
    spec: PreprocessSpec,
    data: ImageDataset,
    source: str,
    config: HeadConfig | None = None,
) -> ShippedHead:
    """The shipped head of a bundle being exported: features of at most ``per_class`` labelled images per class
    through its fp32 member, the head fitted and measured on them (every shipped precision measured)."""
    config = config or HeadConfig()
    data.require_trainable("a shipped head")
    rng = np.random.default_rng(config.seed)
    picks = [rng.permutation(np.flatnonzero(data.labels == c))[: config.per_class] for c in np.unique(data.labels)]
    idx = np.sort(np.concatenate(picks))
    subset = data.subset(idx)  # folders load as lists of differently sized images
    images, labels = list(subset.images), [data.classes[int(i)] for i in subset.labels]
    keys = subset.image_keys()
    features = member_features(members[Precision.FP32.member], spec, images)
    others = {
        p.value: _member_features(members[p.member], spec, images)
        for p in (Precision.INT8, Precision.FP16)
        if p.member in members
    }
    linear = None
    if backbone.head is not None and features.shape[1] == backbone.head.weight.shape[1]:
        weight, bias = backbone.head.weight.detach().numpy(), backbone.head.bias.detach().numpy()
        linear = (weight, bias, list(backbone.classes))
    return fit_shipped_head(features, labels, config, source=source, linear=linear, precisions=others, keys=keys)


def _member_features(
    model: bytes, spec: PreprocessSpec, images: list[npt.NDArray[np.uint8]]
) -> Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float32]]:
    def features_of(rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        return member_features(model, spec, [images[int(r)] for r in rows])

    return features_of
