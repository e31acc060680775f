"""Device -> host: one portable, verified file of what a device enrolled, bound to the model that made it.

An enrolment file is a zip like a bundle: ``manifest.json`` (format, version, the model digest and
precision whose features it holds, preprocessing key, labels, counts, and the SHA-256 and size of every
other member), ``enrolment.npz`` (features ``(N, D)`` float32, labels, sample keys, sample ids) and,
only when asked, ``images/<sample key><suffix>`` (the original image files). The reader checks every
name, compression method, size and hash before parsing anything, as :class:`~edgetl_runtime.bundle.reader.Bundle`
does, and :meth:`Enrolment.check_bundle` refuses features made by another backbone, precision or
preprocessing. Nothing is pickled; the file appears only when complete and readable (atomic write).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import re
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edgetl_runtime.atomic import atomic_write
from edgetl_runtime.bundle.manifest import MANIFEST_NAME, Manifest, Precision, unique_keys
from edgetl_runtime.bundle.npz import ArrayHeader, expect_array, read_npz
from edgetl_runtime.bundle.safe_zip import MAX_MANIFEST_BYTES, MAX_MEMBER_BYTES, checked_entries, read_member
from edgetl_runtime.bundle.shipped_head import label_collisions
from edgetl_runtime.errors import (
    BundleError,
    EnrolmentError,
    EnrolmentIntegrityError,
    EnrolmentMismatchError,
    InputError,
    raise_all,
)
from edgetl_runtime.images import as_image_list
from edgetl_runtime.numerics import MAX_FEATURE_MAGNITUDE
from edgetl_runtime.preprocess import preprocess_key as spec_key

if TYPE_CHECKING:
    from edgetl_runtime.features import FeatureExtractor
    from edgetl_runtime.state.store import FeatureStore

ENROLMENT_FORMAT = "edgetl-enrolment"
ENROLMENT_VERSION = 1
ARRAYS_NAME = "enrolment.npz"
IMAGES_PREFIX = "images/"
_KEY = re.compile(r"^[0-9a-f]{64}$")
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "model_digest": str,
    "precision": str,
    "backbone": str,
    "feature_dim": int,
    "preprocess_key": str,
    "head_digest": (str, type(None)),
    "samples": int,
    "counts": dict,
    "removed_shipped_labels": list,
    "images": int,
    "members": dict,
    "created": str,
    "versions": dict,
}
_FIX = "Fix: export it again from the device (edgetl-device export) and copy it whole."
_ERRORS: dict[str, Any] = {"error": EnrolmentError, "integrity_error": EnrolmentIntegrityError, "fix": _FIX}


@dataclass(frozen=True, eq=False)
class Enrolment:
    """A verified enrolment file held in memory."""

    path: Path
    info: dict[str, Any]  # the manifest
    labels: npt.NDArray[np.str_]  # (N,)
    keys: list[str]  # (N,) sample keys: sha256 of the pixels (files before schema 2: of pixels, model, preprocessing)
    features: npt.NDArray[np.float32]  # (N, D)
    ids: npt.NDArray[np.int64]  # (N,) sample ids on the device
    images: dict[str, bytes] = field(default_factory=dict)  # sample key -> image file bytes (when exported)

    @property
    def model_digest(self) -> str:
        return str(self.info["model_digest"])

    @property
    def precision(self) -> Precision:
        return Precision(self.info["precision"])

    def counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.info["counts"].items()}

    def check_bundle(self, manifest: Manifest, precision: Precision | str | None = None) -> Precision:
        """The precision of ``manifest``'s model that made these features; :class:`EnrolmentMismatchError` if
        none did (another backbone or export), if it is not ``precision`` when one is required, or if the
        feature width or preprocessing differ."""
        models = {p: manifest.model_digest(p) for p in manifest.precisions}
        problems = []
        if self.info["feature_dim"] != manifest.backbone.feature_dim:
            problems.append(
                f"its features are {self.info['feature_dim']} wide, the bundle's {manifest.backbone.feature_dim}"
            )
        if self.info["preprocess_key"] != spec_key(manifest.preprocess):
            problems.append("it was made under another preprocessing (input size, crop or normalisation)")
        made_by = [p for p, digest in models.items() if digest == self.model_digest]
        stated = self.precision
        if not made_by:
            have = ", ".join(f"{p.value} {d[:12]}…" for p, d in models.items())
            problems.append(
                f"its features come from model {self.model_digest[:12]}… ({stated.value}), which this bundle "
                f"does not ship (it has {have}): another backbone or another export"
            )
        elif stated not in made_by:
            problems.append(f"it says precision {stated.value} but its model is this bundle's {made_by[0].value}")
        wanted = None if precision is None else Precision(getattr(precision, "value", precision))
        if made_by and wanted is not None and models.get(wanted) != self.model_digest:
            problems.append(
                f"its features come from the {stated.value} model, not {wanted.value}: features of two precisions "
                "differ slightly and must not be mixed in one state"
            )
        raise_all(
            EnrolmentMismatchError,
            problems,
            f"Enrolment {self.path} does not belong to this bundle. Fix: use it with the bundle (and precision) the "
            "device was running, or enrol again on a device running this bundle",
        )
        return stated


def npz_bytes(arrays: dict[str, npt.NDArray[Any]]) -> bytes:
    """Arrays as an uncompressed ``.npz`` with no object arrays (readable with ``allow_pickle=False``)."""
    for key, value in arrays.items():
        if np.asarray(value).dtype.hasobject:
            raise InputError(f"Array {key!r} has dtype object, which would need pickle; use numeric or str arrays.")
    buffer = io.BytesIO()
    savez: Any = np.savez  # numpy's stub types **kwds as its allow_pickle flag
    savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    return buffer.getvalue()


def write_enrolment(
    path: str | os.PathLike[str],
    *,
    manifest: Manifest,
    precision: Precision,
    ids: npt.NDArray[np.int64],
    labels: npt.NDArray[np.str_],
    keys: list[str],
    features: npt.NDArray[np.float32],
    removed_shipped: list[str] = (),  # type: ignore[assignment]
    images: dict[str, tuple[str, bytes]] | None = None,
    versions: dict[str, str] | None = None,
) -> Enrolment:
    """Write an enrolment file atomically and return it as read back (verified) from disk.

    ``images`` maps sample keys to ``(suffix, file bytes)``; it is only written when given.
    """
    features = np.ascontiguousarray(features, dtype="<f4")  # (N, D)
    if not len(keys) or features.shape != (len(keys), manifest.backbone.feature_dim) or len(labels) != len(keys):
        raise InputError(
            f"Nothing to export, or inconsistent inputs: {len(keys)} keys, {len(labels)} labels, features "
            f"{features.shape}. Fix: enrol samples first (add)."
        )
    members = {
        ARRAYS_NAME: npz_bytes(
            {
                "features": features,
                "labels": np.asarray(labels, dtype=str),
                "keys": np.asarray(keys, dtype="<U64"),
                "ids": np.asarray(ids, dtype=np.int64),
            }
        )
    }
    for key, (suffix, data) in sorted((images or {}).items()):
        members[f"{IMAGES_PREFIX}{key}{suffix.lower()}"] = data
    names, counts = np.unique(np.asarray(labels, dtype=str), return_counts=True)
    head = manifest.members.get("head.npz")
    info: dict[str, Any] = {
        "format": ENROLMENT_FORMAT,
        "format_version": ENROLMENT_VERSION,
        "model_digest": manifest.model_digest(precision),
        "precision": precision.value,
        "backbone": manifest.backbone.name,
        "feature_dim": manifest.backbone.feature_dim,
        "preprocess_key": spec_key(manifest.preprocess),
        "head_digest": None if head is None else head.sha256,
        "samples": len(keys),
        "counts": {str(n): int(c) for n, c in zip(names, counts, strict=True)},
        "removed_shipped_labels": sorted(removed_shipped),
        "images": len(members) - 1,
        "members": {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in sorted(members.items())},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": dict(versions or {}),
    }
    text = json.dumps(info, indent=2, allow_nan=False)
    with atomic_write(path, check=read_enrolment) as fh, zipfile.ZipFile(fh, "w") as archive:
        archive.writestr(MANIFEST_NAME, text, compress_type=zipfile.ZIP_DEFLATED)
        for name, data in sorted(members.items()):
            method = zipfile.ZIP_STORED if name.startswith(IMAGES_PREFIX) else zipfile.ZIP_DEFLATED
            archive.writestr(name, data, compress_type=method)
    return read_enrolment(path)


def export_samples(
    store: FeatureStore,
    extractor: FeatureExtractor,
    manifest: Manifest,
    precision: Precision,
    path: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]] | None,
    versions: dict[str, str],
) -> Enrolment:
    """Every sample the store's model has features for, as an enrolment file (see ``Learner.export_enrolment``)."""
    ids, labels, keys, features = store.samples_with_keys()
    if not len(ids):
        raise InputError("Nothing is enrolled, so there is nothing to export. Fix: add(images, label) first.")
    attached: dict[str, tuple[str, bytes]] = {}
    if images:
        files = [Path(p) for p in images]
        enrolled = set(keys)
        for file, key in zip(files, extractor.keys(as_image_list(files)), strict=True):
            if key in enrolled:
                attached[key] = (file.suffix, file.read_bytes())
    return write_enrolment(
        path,
        manifest=manifest,
        precision=precision,
        ids=ids,
        labels=labels,
        keys=keys,
        features=features,
        removed_shipped=store.removed_shipped_labels(),
        images=attached,
        versions=versions,
    )


def read_enrolment(path: str | os.PathLike[str]) -> Enrolment:
    """Open and verify an enrolment file (structure, every SHA-256, array headers, labels, keys).

    Raises:
        EnrolmentError: not an enrolment file, unknown version, malformed content.
        EnrolmentIntegrityError: a member was changed or truncated after export.
    """
    path = Path(path)
    if not path.is_file():
        raise EnrolmentError(f"Enrolment file {path} does not exist or is not a file. {_FIX}")
    try:
        with zipfile.ZipFile(path) as archive:
            infos = checked_entries(archive, path, error=EnrolmentError, fix=_FIX, stored_only=_stored_only)
        info = _parse_manifest(read_member(path, infos[MANIFEST_NAME], MAX_MANIFEST_BYTES, **_ERRORS), path)
        _check_members(info, infos, path)
        data = {name: _verified(path, infos[name], info) for name in info["members"]}
    except (EnrolmentError, InputError):
        raise
    except BundleError as exc:  # the shared bounded reader's refusals
        raise EnrolmentError(f"{path}: {exc}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError, ValueError) as exc:
        raise EnrolmentError(
            f"{path} is not a valid enrolment file ({type(exc).__name__}: {exc}): truncated or damaged. {_FIX}"
        ) from None
    try:
        arrays = read_npz(data[ARRAYS_NAME], ARRAYS_NAME, lambda h: _array_problems(h, info))
    except BundleError as exc:
        raise EnrolmentError(f"{path}: {exc}") from None
    labels, keys = arrays["labels"].astype(str), [str(k) for k in arrays["keys"]]
    features = np.asarray(arrays["features"], dtype=np.float32)
    _check_values(labels, keys, features, np.asarray(arrays["ids"], dtype=np.int64), info, path)
    images = {n[len(IMAGES_PREFIX) :].split(".", 1)[0]: d for n, d in data.items() if n.startswith(IMAGES_PREFIX)}
    unknown = sorted(set(images) - set(keys))
    if unknown:
        raise EnrolmentError(f"{path} holds images {unknown[:3]} of no enrolled sample. {_FIX}")
    return Enrolment(path, info, labels, keys, features, np.asarray(arrays["ids"], dtype=np.int64), images)


def _stored_only(name: str) -> str | None:
    if name.startswith(IMAGES_PREFIX):
        return "the writer stores image files as they are (they are compressed already)"
    return None


def _parse_manifest(text: bytes, path: Path) -> dict[str, Any]:
    try:
        info = json.loads(text, object_pairs_hook=unique_keys)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, BundleError) as exc:
        raise EnrolmentError(f"{path}: {MANIFEST_NAME} is not valid JSON ({exc}). {_FIX}") from None
    if not isinstance(info, dict) or info.get("format") != ENROLMENT_FORMAT:
        raise EnrolmentError(f"{path} is not an edgetl enrolment file (format {str(info)[:60]!r}...). {_FIX}")
    version = info.get("format_version")
    if type(version) is not int or version != ENROLMENT_VERSION:
        raise EnrolmentError(
            f"{path} has enrolment format_version {version!r}; this edgetl reads version {ENROLMENT_VERSION}. "
            "Fix: upgrade edgetl and edgetl-runtime to one version on the host and the devices."
        )
    problems = [
        f"{key!r} must be a {kind.__name__ if isinstance(kind, type) else 'string or null'}"
        for key, kind in _FIELDS.items()
        if not isinstance(info.get(key), kind) or isinstance(info.get(key), bool)
    ]
    problems += [f"unknown field {key!r}" for key in info if key not in _FIELDS]
    if not problems:
        if info["precision"] not in [p.value for p in Precision]:
            problems.append(f"precision {info['precision']!r} is not one of fp32, fp16, int8")
        if not (isinstance(info["model_digest"], str) and _KEY.match(info["model_digest"])):
            problems.append("model_digest must be a sha256 hex digest")
        if info["samples"] < 1 or info["feature_dim"] < 1:
            problems.append("samples and feature_dim must be positive")
        for name, member in info["members"].items():
            ok = isinstance(member, dict) and set(member) == {"sha256", "size"}
            if not ok or not isinstance(member["sha256"], str) or type(member["size"]) is not int or member["size"] < 0:
                problems.append(f"member {name!r} needs a sha256 string and a size >= 0")
        if ARRAYS_NAME not in info["members"]:
            problems.append(f"{ARRAYS_NAME} is required")
    raise_all(EnrolmentError, problems, f"{path}: {MANIFEST_NAME} is malformed; {_FIX}")
    return info


def _check_members(info: dict[str, Any], infos: dict[str, zipfile.ZipInfo], path: Path) -> None:
    listed, present = set(info["members"]), set(infos) - {MANIFEST_NAME}
    problems = [f"{n} is listed but missing" for n in sorted(listed - present)]
    problems += [f"{n} is in the archive but not listed" for n in sorted(present - listed)]
    problems += [
        f"{n} is not {ARRAYS_NAME} or an image file under {IMAGES_PREFIX}"
        for n in sorted(listed)
        if n != ARRAYS_NAME
        and not (n.startswith(IMAGES_PREFIX) and _KEY.match(n[len(IMAGES_PREFIX) :].split(".", 1)[0]))
    ]
    if not problems and info["images"] != len(listed) - 1:
        problems.append(f"it says {info['images']} images but holds {len(listed) - 1}")
    raise_all(EnrolmentError, problems, f"{path} does not match its manifest; {_FIX}")


def _verified(path: Path, entry: zipfile.ZipInfo, info: dict[str, Any]) -> bytes:
    expected = info["members"][entry.filename]
    if entry.file_size != expected["size"]:
        raise EnrolmentIntegrityError(
            f"{path} member {entry.filename!r} holds {entry.file_size} bytes, the manifest promises "
            f"{expected['size']}: the file was modified or truncated. {_FIX}"
        )
    limit = min(MAX_MEMBER_BYTES, expected["size"])
    return read_member(path, entry, limit, sha256=str(expected["sha256"]), **_ERRORS)


def _array_problems(headers: dict[str, ArrayHeader], info: dict[str, Any]) -> list[str]:
    n, dim = info["samples"], info["feature_dim"]
    problems = expect_array(headers, "features", "f", (n, dim))
    problems += expect_array(headers, "labels", "U", (n,))
    problems += expect_array(headers, "keys", "U", (n,))
    problems += expect_array(headers, "ids", "iu", (n,))
    known = {"features", "labels", "keys", "ids"}
    return problems + [f"array {h.describe()} is not an enrolment array" for k, h in headers.items() if k not in known]


def _check_values(
    labels: npt.NDArray[np.str_],
    keys: list[str],
    features: npt.NDArray[np.float32],
    ids: npt.NDArray[np.int64],
    info: dict[str, Any],
    path: Path,
) -> None:
    problems = label_collisions(sorted(set(labels.tolist())))
    bad_keys = [k for k in keys if not _KEY.match(k)]
    problems += [f"sample key {k[:20]!r} is not a sha256 hex digest" for k in bad_keys[:3]]
    if len(np.unique(ids)) != len(ids) or (len(ids) and ids.min() < 1):
        problems.append("sample ids must be distinct and positive")
    if not np.isfinite(features).all():
        problems.append("features hold NaN or infinite values")
    elif features.size and float(np.abs(features).max()) > MAX_FEATURE_MAGNITUDE:
        problems.append(
            f"features reach magnitude {float(np.abs(features).max()):.3g}, beyond the {MAX_FEATURE_MAGNITUDE:g} "
            "any backbone's pooled features stay within"
        )
    names, counts = np.unique(labels, return_counts=True)
    if {str(n): int(c) for n, c in zip(names, counts, strict=True)} != info["counts"]:
        problems.append("the per-label counts differ from the manifest's")
    raise_all(EnrolmentError, problems, f"{path} holds invalid samples; {_FIX}")
