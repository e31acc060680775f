"""Write a ``.edgetl`` bundle atomically, hashing every member into the manifest."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from edgetl_runtime.atomic import atomic_write
from edgetl_runtime.bundle.manifest import GOLDEN_NAME, MANIFEST_NAME, Manifest, MemberInfo, member_name_problem
from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.errors import BundleError, raise_all


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise arrays as .npz without object arrays, so readers can use ``allow_pickle=False``."""
    for key, value in arrays.items():
        if np.asarray(value).dtype == object:
            raise BundleError(f"Array {key!r} has dtype object, which would need pickle; use numeric or str arrays.")
    buffer = io.BytesIO()
    plain: dict[str, Any] = {k: np.asarray(v) for k, v in arrays.items()}
    np.savez(buffer, **plain)
    return buffer.getvalue()


def write_bundle(path: str | Path, manifest: Manifest, members: dict[str, bytes]) -> Bundle:
    """Write ``members`` plus a manifest carrying their SHA-256, then re-open and verify the result.

    ``manifest.members`` is replaced by the hashes of ``members``; the file appears only when complete.
    """
    problems = [p for p in map(member_name_problem, members) if p]
    if MANIFEST_NAME in members:
        problems.append(f"{MANIFEST_NAME} is written by the bundle writer itself, not passed as a member")
    if GOLDEN_NAME not in members:
        problems.append(f"a bundle needs {GOLDEN_NAME} so devices can check their backend; none was given")
    raise_all(BundleError, problems, "Cannot write this bundle (nothing was written)")
    hashed = {name: MemberInfo(hashlib.sha256(data).hexdigest(), len(data)) for name, data in members.items()}
    final = dataclasses.replace(manifest, members=hashed)
    Manifest.from_json(final.to_json())  # the writer must never produce what the reader refuses
    # Bundle.open on the finished temp file: an existing bundle at ``path`` is only replaced by one that reads back.
    with atomic_write(path, check=Bundle.open) as fh, zipfile.ZipFile(fh, "w") as archive:
        archive.writestr(MANIFEST_NAME, final.to_json(), compress_type=zipfile.ZIP_DEFLATED)
        for name, data in sorted(members.items()):
            # ONNX weights barely compress; storing them keeps loading fast on small devices.
            method = zipfile.ZIP_STORED if name.endswith(".onnx") else zipfile.ZIP_DEFLATED
            archive.writestr(name, data, compress_type=method)
    return Bundle.open(path)
