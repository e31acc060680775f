"""``edgetl-device predict FILES``: each file decoded on its own; a bad one is reported, the others predicted."""

from __future__ import annotations

import argparse

import numpy as np

from edgetl_runtime.cli_images import decode_each, files_and_folders
from edgetl_runtime.learner import Learner


def predict_files(learner: Learner, args: argparse.Namespace) -> dict[str, object]:
    """Labels, probabilities and similarities per readable file; ``failed`` names each unreadable one."""
    images, files, bad = decode_each(files_and_folders(args.files))
    out: dict[str, object] = {}
    predictions: list[dict[str, object]] = []
    threshold = float("nan")
    if images:  # a run whose every file is bad still reports them
        features = learner.features(images)  # once: labels, probabilities and similarities share it
        head = learner.head
        threshold = float(head.reject_threshold_)
        labels = head.predict(features, reject=args.reject)
        all_proba = head.predict_proba(features)  # (N, C)
        proba = all_proba.max(axis=1)
        similarity = head.similarity(features)
        predictions = [
            {"file": str(f), "label": str(lbl), "probability": round(float(p), 4), "similarity": round(float(c), 4)}
            for f, lbl, p, c in zip(files, labels, proba, similarity, strict=True)
        ]
        if args.top_k > 1:
            classes = [str(c) for c in head.classes_]
            for row, p in zip(predictions, all_proba, strict=True):
                best = np.argsort(-p, kind="stable")[: args.top_k]
                row["top_k"] = [{"label": classes[i], "probability": round(float(p[i]), 4)} for i in best]
    out["reject_threshold"] = round(threshold, 4) if np.isfinite(threshold) else None
    out["predictions"] = predictions
    if bad:
        out["failed"] = [{"file": f, "error": why} for f, why in bad.items()]
    if args.reject and predictions and not np.isfinite(threshold):
        out["note"] = "nothing can be rejected yet: enrol at least 2 images of a class to calibrate rejection"
    return out
