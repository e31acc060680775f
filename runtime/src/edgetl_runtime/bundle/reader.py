"""Read and verify a ``.edgetl`` bundle: a zip whose every member is hash-checked before it is parsed.

Nothing in a bundle is executed or unpickled. A tampered, truncated or hostile archive (zip-slip
names, symlinks, absurd declared sizes) is refused with a :class:`BundleError` before any member is
used.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgetl_runtime.bundle.head_format import CLASS_STATS_FORMAT, class_stats_problems
from edgetl_runtime.bundle.manifest import (
    BEST_ORDER,
    GOLDEN_NAME,
    HEAD_NAME,
    MANIFEST_NAME,
    Manifest,
    Precision,
)
from edgetl_runtime.bundle.npz import ArrayHeader, expect_array, read_npz
from edgetl_runtime.bundle.onnx_scan import check_self_contained
from edgetl_runtime.bundle.safe_zip import (
    MAX_MANIFEST_BYTES,
    MAX_MEMBER_BYTES,
    checked_entries,
    read_member,
)
from edgetl_runtime.errors import BundleError, BundleIntegrityError

_FIX = "Re-export the bundle (or copy it again)."
MAX_GOLDEN_ROWS = 64  # the exporter writes 4; every row is a backbone run at every load


@dataclass(frozen=True)
class Bundle:
    """A verified bundle held in memory (members are small: a few MB per model)."""

    path: Path
    manifest: Manifest
    members: dict[str, bytes]

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Bundle:
        """Open, check structure, verify every SHA-256, and parse the manifest."""
        path = Path(path)
        if not path.is_file():
            raise BundleError(
                f"Bundle {path} does not exist or is not a file; pass the .edgetl file `edgetl export` wrote."
            )
        try:
            with zipfile.ZipFile(path) as archive:
                infos = checked_entries(archive, path, fix=_FIX, stored_only=_stored_only)
            manifest = Manifest.from_json(read_member(path, infos[MANIFEST_NAME], MAX_MANIFEST_BYTES, fix=_FIX))
            _check_member_list(manifest, infos, path)
            members = {name: _read_verified(path, infos[name], manifest) for name in manifest.members}
            for precision in manifest.precisions:  # verified bytes, but still nothing outside the bundle
                check_self_contained(members[precision.member], precision.member)
        except BundleError:
            raise
        # A damaged archive surfaces as any of these from zipfile/zlib (bad CRC, bad deflate stream, an
        # "encrypted" flag bit, an unknown compression method, a short read): all mean "not a valid bundle".
        except (
            zipfile.BadZipFile,
            zlib.error,
            EOFError,
            OSError,
            RuntimeError,
            NotImplementedError,
            ValueError,
        ) as exc:
            raise BundleError(
                f"{path} is not a valid bundle ({type(exc).__name__}: {exc}): truncated or damaged. Copy it again."
            ) from None
        return cls(path, manifest, members)

    def model_bytes(self, precision: Precision) -> bytes:
        return self.members[self.manifest.model_member(precision)]

    def resolve_precision(self, wanted: str | Precision) -> Precision:
        """``best`` -> the fastest precision shipped (int8 > fp16 > fp32); else the one asked for."""
        precision = requested_precision(wanted)
        if precision is None:
            return next(p for p in BEST_ORDER if p in self.manifest.precisions)
        self.manifest.model_member(precision)  # raises if absent
        return precision

    def golden(self) -> dict[str, npt.NDArray[np.generic]]:
        """Fixed inputs ``(G, 3, H, W)`` and their fp32 features ``(G, D)``, to re-check any backend.

        Every array's dtype and shape is checked against the manifest from its header, before it is read.
        """
        return read_npz(self.members[GOLDEN_NAME], GOLDEN_NAME, self._golden_problems)

    def _golden_problems(self, headers: dict[str, ArrayHeader]) -> list[str]:
        dim, (height, width) = self.manifest.backbone.feature_dim, self.manifest.preprocess.input_size
        inputs = headers.get("inputs")
        count = inputs.shape[0] if inputs is not None and inputs.shape else None
        problems = expect_array(headers, "inputs", "f", (count, 3, height, width))
        if count is not None and not 1 <= count <= MAX_GOLDEN_ROWS:
            problems.append(f"'inputs' holds {count} rows; a golden check needs 1 to {MAX_GOLDEN_ROWS}")
        references = ["features"] + [f"features_{p.value}" for p in Precision if p is not Precision.FP32]
        for key in references:  # the host's output at each precision (fp32 always)
            problems += expect_array(headers, key, "f", (count, dim), required=key == "features")
        known = {"inputs", *references}
        return problems + [f"array {h.describe()} is not a golden array" for k, h in headers.items() if k not in known]

    def head_arrays(self) -> dict[str, npt.NDArray[np.generic]] | None:
        """The host-trained head's arrays, if the bundle ships one (checked against the manifest before reading)."""
        if HEAD_NAME not in self.members:
            return None
        if self.manifest.head.get("format") == CLASS_STATS_FORMAT:  # statistics the device heads continue from
            return read_npz(self.members[HEAD_NAME], HEAD_NAME, lambda h: class_stats_problems(h, self.manifest))
        return read_npz(self.members[HEAD_NAME], HEAD_NAME, self._head_problems)

    def _head_problems(self, headers: dict[str, ArrayHeader]) -> list[str]:
        labels = self.manifest.head_labels
        coef = headers.get("coef")
        count = len(labels) if labels else (coef.shape[0] if coef is not None and coef.shape else None)
        problems = expect_array(headers, "coef", "f", (count, self.manifest.backbone.feature_dim))
        problems += expect_array(headers, "intercept", "f", (count,))
        problems += expect_array(headers, "classes", "U", (count,))
        problems += expect_array(headers, "kind", "U", ())
        known = {"coef", "intercept", "classes", "kind"}
        return problems + [f"array {h.describe()} is not a head array" for k, h in headers.items() if k not in known]


def requested_precision(wanted: str | Precision) -> Precision | None:
    """The precision a caller asked for, or None for ``best``; anything else is a :class:`BundleError`."""
    name = str(getattr(wanted, "value", wanted))
    if name == "best":
        return None
    try:
        return Precision(name)
    except ValueError:
        raise BundleError(f"Unknown precision {wanted!r}; choose best, int8, fp16 or fp32.") from None


def _stored_only(name: str) -> str | None:
    if name.endswith(".onnx"):
        return (
            "the bundle writer stores models uncompressed (weights barely compress, and a compressed model could "
            "inflate far beyond its size)"
        )
    return None


def _check_member_list(manifest: Manifest, infos: dict[str, zipfile.ZipInfo], path: Path) -> None:
    listed = set(manifest.members)
    present = set(infos) - {MANIFEST_NAME}
    problems = [f"{n} is listed in the manifest but missing" for n in sorted(listed - present)]
    problems += [f"{n} is in the archive but not in the manifest" for n in sorted(present - listed)]
    if GOLDEN_NAME not in listed:
        problems.append(f"{GOLDEN_NAME} is required")
    if problems:
        raise BundleError(f"{path} does not match its manifest: " + "; ".join(problems) + ". Re-export the bundle.")


def _read_verified(path: Path, info: zipfile.ZipInfo, manifest: Manifest) -> bytes:
    expected = manifest.members[info.filename]
    if info.file_size != expected.size:  # a longer member is tampering too, not just "too large"
        raise BundleIntegrityError(
            f"Member {info.filename!r} fails verification: the archive holds {info.file_size} bytes, the manifest "
            f"promises {expected.size}. The bundle was modified or damaged; do not use it, copy or export it again."
        )
    return read_member(path, info, min(MAX_MEMBER_BYTES, expected.size), sha256=expected.sha256, fix=_FIX)
