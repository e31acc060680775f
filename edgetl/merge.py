"""Fleet merge on the host: devices' enrolments and the shipped head folded into one new bundle.

Only features travel: each enrolment file (``edgetl-device export``) is verified and bound to one of the
bundle's models; its samples become class statistics and are added to the shipped head's, which is exact
(counts and sums add, scatters add with their parallel-axis term). A class whose scatter then has more
factor rows than the head's rank is compressed to it, the one approximation (reported per class). The
same label from several devices is one class; an image enrolled twice under one label (same sample key:
same pixels, model and preprocessing) counts once; an image under two labels is a conflict, left out
(or refused). The backbone members are copied byte for byte, so the model digest, and with it every
device's state, stays valid; the new head records which device samples it holds, so the device that
enrolled them does not count them twice on top of it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl.shipped_head import calibration_quantiles
from edgetl_exporters.bundle_writer import npz_bytes, write_bundle
from edgetl_runtime.bundle.manifest import HEAD_NAME, Precision
from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.bundle.shipped_head import head_npz_dict, head_section, read_prior
from edgetl_runtime.enrolment import Enrolment, read_enrolment
from edgetl_runtime.errors import ConfigError, EdgeTLError, EnrolmentError, InputError
from edgetl_runtime.heads import ClassStats, LDAHead, Prior
from edgetl_runtime.heads.lda import DEFAULT_ALPHA
from edgetl_runtime.heads.prior import KEY_BYTES, key_prefixes
from edgetl_runtime.heads.ridge import FALLBACK_TEMPERATURE
from edgetl_runtime.outputs import check_output

DEFAULT_RANK = 16  # when the bundle ships no head to take its rank from (see edgetl.shipped_head)
ON_CONFLICT = ("drop", "error")


@dataclass(frozen=True)
class MergeConfig:
    """How a merge treats its inputs.

    Attributes:
        rank: scatter rows kept per class (None: the shipped head's, else :data:`DEFAULT_RANK`).
        on_conflict: ``drop`` leaves out every copy of an image enrolled under two labels (reported);
            ``error`` refuses the merge.
        precision: accept only enrolments of this precision (None: any model the bundle ships).
    """

    rank: int | None = None
    on_conflict: str = "drop"
    precision: str | None = None

    def __post_init__(self) -> None:
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"rank must be >= 1, got {self.rank}.")
        if self.on_conflict not in ON_CONFLICT:
            raise ConfigError(f"on_conflict must be one of {ON_CONFLICT}, got {self.on_conflict!r}.")
        if self.precision is not None and self.precision not in [p.value for p in Precision]:
            raise ConfigError(f"precision must be one of fp32, fp16, int8, got {self.precision!r}.")


@dataclass(frozen=True)
class MergeResult:
    path: Path
    bundle: Bundle
    report: dict[str, Any]


def merge_enrolments(
    bundle: str | Path,
    enrolments: Sequence[str | Path],
    output: str | Path,
    config: MergeConfig | None = None,
) -> MergeResult:
    """Write ``output``: ``bundle`` with a head that also knows every sample of ``enrolments``.

    Every input is read and checked before anything is written; the output appears only when complete
    (atomic write, read back and verified).

    Raises:
        EnrolmentError: an enrolment is unreadable, tampered with, or from another backbone/precision
            (every bad file is named at once).
        InputError: a conflict with ``on_conflict="error"``, or nothing to merge.
    """
    config = config or MergeConfig()
    check_output(output, [bundle, *enrolments], force=True)  # an input is never overwritten (the CLI adds --force)
    original = Bundle.open(bundle)
    prior = read_prior(original)
    files = _read_all(enrolments, original, config)
    rows, report = _dedupe(files, prior, config)
    if not len(rows["labels"]) and prior is None:
        raise InputError("The enrolments hold no sample left to merge and the bundle ships no head; nothing to write.")
    power = prior.stats.power if prior is not None else 0.5
    rank = config.rank or (int(original.manifest.head.get("max_factor_rows", 0)) or DEFAULT_RANK)
    merged = _merged_prior(prior, rows, power, rank, report)
    section = head_section(
        merged,
        accuracy=_accuracy_note(original.manifest.head.get("accuracy")),
        source=original.manifest.head.get("source"),
        fitted=original.manifest.head.get("fitted"),
        merged={**report, "from_bundle_head": original.manifest.members.get(HEAD_NAME) is not None},
    )
    members = {**original.members, HEAD_NAME: npz_bytes(head_npz_dict(merged))}
    manifest = dataclasses.replace(
        original.manifest,
        head_labels=tuple(str(c) for c in merged.classes),
        head=section,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    written = write_bundle(output, manifest, members)
    return MergeResult(Path(output), written, report)


def _read_all(paths: Sequence[str | Path], bundle: Bundle, config: MergeConfig) -> list[tuple[Enrolment, Precision]]:
    """Every enrolment read and bound to the bundle; all bad files are reported in one error."""
    if not paths:
        raise InputError("Give at least one enrolment file (edgetl-device export writes them).")
    out: list[tuple[Enrolment, Precision]] = []
    refused: list[tuple[str | Path, EdgeTLError]] = []
    for path in paths:
        try:
            enrolment = read_enrolment(path)
            out.append((enrolment, enrolment.check_bundle(bundle.manifest, config.precision)))
        except EdgeTLError as exc:
            refused.append((path, exc))
    if refused:
        kinds = {type(exc) for _, exc in refused}
        error = kinds.pop() if len(kinds) == 1 else EnrolmentError  # one kind of failure keeps its type
        lines = [f"{path}: {' '.join(str(exc).split())}" for path, exc in refused]
        raise error(f"Nothing was written; {len(refused)} enrolment file(s) refused:\n  - " + "\n  - ".join(lines))
    return out


def _dedupe(
    files: list[tuple[Enrolment, Precision]], prior: Prior | None, config: MergeConfig
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One row per sample key: duplicates counted once, conflicts (two labels) left out or refused."""
    keys = [k for e, _ in files for k in e.keys]
    labels = np.concatenate([e.labels for e, _ in files])
    features = np.concatenate([e.features for e, _ in files])
    source = np.concatenate([np.full(len(e.keys), i) for i, (e, _) in enumerate(files)])
    by_key: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        by_key.setdefault(key, []).append(i)
    counted_as = _counted_labels(prior)
    keep, conflicts, duplicates, already = [], [], 0, 0
    for key, idx in by_key.items():
        names = sorted({str(labels[i]) for i in idx})
        before = counted_as.get(bytes.fromhex(key[: 2 * KEY_BYTES]))  # the label the head counted it under
        if before is not None and names == [before]:
            already += len(idx)
        elif len(names) > 1 or before is not None:  # two labels, or a label other than the head's: a conflict
            names = sorted({*names, *([before] if before is not None else [])})
            where = sorted({str(files[int(source[i])][0].path) for i in idx})
            conflicts.append({"key": key[:16], "labels": names, "files": where})
        else:
            keep.append(idx[0])
            duplicates += len(idx) - 1
    if conflicts and config.on_conflict == "error":
        shown = "; ".join(f"{c['key']}… under {c['labels']} in {c['files']}" for c in conflicts[:5])
        raise InputError(
            f"{len(conflicts)} image(s) are enrolled under two labels: {shown}. Nothing was written. Fix: remove the "
            "wrong sample on its device (edgetl-device remove) and export again, or merge with --on-conflict drop."
        )
    kept = np.array(sorted(keep), dtype=np.int64)
    report = {
        "enrolments": [_describe(e, p) for e, p in files],
        "samples_in": len(keys),
        "samples_merged": len(kept),
        "duplicates_counted_once": duplicates,
        "already_in_head": already,
        "conflicts_left_out": conflicts,
        "removed_shipped_on_devices": sorted({v for e, _ in files for v in e.info["removed_shipped_labels"]}),
    }
    rows = {"labels": labels[kept], "features": features[kept], "keys": [keys[i] for i in kept]}
    return rows, report


def _counted_labels(prior: Prior | None) -> dict[bytes, str]:
    """Key prefix -> the label the shipped head counted that sample under."""
    if prior is None:
        return {}
    names = [str(c) for c in prior.classes]
    return {row.tobytes(): names[c] for row, c in zip(prior.counted_keys, prior.counted_class, strict=True)}


def _merged_prior(prior: Prior | None, rows: dict[str, Any], power: float, rank: int, report: dict[str, Any]) -> Prior:
    """The shipped prior plus the rows' statistics (exact), compressed to ``rank`` rows per class."""
    stats = prior.stats if prior is not None else None
    if len(rows["labels"]):
        new = ClassStats.from_features(rows["features"], rows["labels"], power=power)
        stats = new if stats is None else stats.merge(new)
    assert stats is not None
    per_class = np.bincount(stats.factor_class, minlength=len(stats.classes))
    report["compressed_classes"] = [str(c) for c, n in zip(stats.classes, per_class, strict=True) if n > rank]
    stats = stats.compress(rank)
    report["rank"] = rank
    report["classes"] = stats.counts_by_label()
    new_classes = set(np.unique(rows["labels"]).tolist()) - set(prior.classes.tolist() if prior is not None else [])
    report["new_classes"] = sorted(new_classes)
    settings = prior.settings() if prior is not None else {}
    alpha = float(settings.get("alpha", DEFAULT_ALPHA))
    temperature = float(settings.get("temperature", FALLBACK_TEMPERATURE))
    kind, weight = str(settings.get("kind", "lda")), settings.get("class_weight", "balanced")
    scores, classes = _calibration(prior, rows, stats)
    counted = key_prefixes(rows["keys"])
    counted_class = np.searchsorted(stats.classes, np.asarray(rows["labels"], dtype=str)).astype(np.int64)
    if prior is not None:  # the shipped head's counted keys keep their labels, re-indexed into the merged classes
        counted = np.concatenate([prior.counted_keys, counted])
        old = np.searchsorted(stats.classes, prior.classes[prior.counted_class]).astype(np.int64)
        counted_class = np.concatenate([old, counted_class])
    return Prior(stats, alpha, temperature, kind, weight, scores, classes, counted, counted_class)


def _calibration(
    prior: Prior | None, rows: dict[str, Any], stats: ClassStats
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Rejection scores: the shipped ones, plus the merged samples' exact leave-one-out similarities (quantiles
    of the correctly classified ones per class), against the merged class sums."""
    head = LDAHead().fit(rows["features"] if len(rows["labels"]) else None, rows["labels"], prior=prior)
    rej = head.rejector_
    where = np.searchsorted(stats.classes, head.classes_[rej.score_class_])
    return calibration_quantiles(rej.scores_, where, rej.correct_, len(stats.classes))


def _accuracy_note(accuracy: Any) -> Any:
    """The host's measurement, kept and labelled: it is of the shipped classes, before any merge."""
    if not isinstance(accuracy, dict):
        return accuracy
    return {**accuracy, "of": "the host's shipped classes, measured at export, before merges"}


def _describe(enrolment: Enrolment, precision: Precision) -> dict[str, Any]:
    return {
        "file": str(enrolment.path),
        "precision": precision.value,
        "samples": int(enrolment.info["samples"]),
        "classes": enrolment.counts(),
        "created": enrolment.info["created"],
    }
