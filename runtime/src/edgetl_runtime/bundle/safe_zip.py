"""The one safe way to read a zip's members, shared by bundles and enrolment files.

Every entry is checked before any member is read: its name (no escape from the archive), no symbolic links,
no duplicates, no encryption, only the methods the writers use (stored, deflate), models stored, and what it
declares (at most 2 GiB, at most 32x its compressed size) must fit in the file that holds it: the compressed
sizes the entries declare cannot add up to more than the archive. Then each member is read *streaming* from
its raw bytes, inflated in 1 MiB steps, with its CRC and (when the caller knows it) its SHA-256 checked as it
is read, and the inflated bytes bounded by 32x the compressed bytes actually consumed, not the declared ones.

Why (issue 24, item 9): a 3 MB enrolment file with 8 deflate members of 64 MiB each, declaring 2 MiB
compressed, passed the declared-ratio check; zipfile then inflated every member in full before anything was
refused (606 MiB; 20 members: 1.4 GB). Here the declared sizes do not fit in the file, and a stream that
inflates beyond 32x what it consumed stops at the first MiB past the bound.
"""

from __future__ import annotations

import hashlib
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from edgetl_runtime.bundle.manifest import MANIFEST_NAME, member_name_problem
from edgetl_runtime.errors import BundleError, BundleIntegrityError

MAX_MANIFEST_BYTES = 1 << 20
MAX_MEMBER_BYTES = 2 << 30  # 2 GiB: larger than any mobile backbone, smaller than a zip bomb's claim
# Deflated members (npz, manifest) inflate at most this much. Golden float arrays of real images compress
# ~1.1-3x (a mostly black Fashion-MNIST-like golden: 2.9x); the cap bounds what a small hostile file can
# make the reader hold (32x its size), while models, stored uncompressed, are never inflated at all.
MAX_COMPRESSION_RATIO = 32
# The methods the writers use. zipfile inflates bzip2 and LZMA without any output bound (a 951-byte
# member reached 2 GB before a size check could run); deflate is inflated here, bounded.
ALLOWED_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
_CHUNK = 1 << 20
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # signature, version, flags, method, time, date, crc, sizes, name/extra
_RATIO_FLOOR = 1024  # a tiny member may inflate to 32 KiB whatever its size


def checked_entries(
    archive: zipfile.ZipFile,
    path: Path,
    *,
    error: type[BundleError] = BundleError,
    fix: str = "Re-export it.",
    stored_only: Callable[[str], str | None] = lambda name: None,
) -> dict[str, zipfile.ZipInfo]:
    """Every entry by name, each checked before any member is read; the first problem raises ``error``.

    ``stored_only(name)`` returns why a member must be stored (models, images), or None.
    """
    infos: dict[str, zipfile.ZipInfo] = {}
    declared = 0
    size = path.stat().st_size
    for info in archive.infolist():
        name = info.filename
        problem = member_name_problem(name)
        if problem:
            raise error(f"{path} holds an {problem}; refusing it. {fix}")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise error(f"{path} holds a symbolic link {name!r}; only regular files are allowed. {fix}")
        if name in infos:
            raise error(f"{path} holds member {name!r} twice; refusing an ambiguous archive. {fix}")
        if info.flag_bits & 0x1:
            raise error(f"{path} member {name!r} is encrypted; edgetl never encrypts members. {fix}")
        if info.compress_type not in ALLOWED_METHODS:
            raise error(
                f"{path} member {name!r} uses zip compression method {info.compress_type}; only "
                f"{' or '.join(ALLOWED_METHODS.values())} are read (other methods inflate without a bound). {fix}"
            )
        why_stored = stored_only(name)
        if why_stored and info.compress_type != zipfile.ZIP_STORED:
            raise error(f"{path} member {name!r} is compressed; {why_stored}. {fix}")
        ratio_cap = info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, _RATIO_FLOOR)
        stored_lies = info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size
        if info.file_size > MAX_MEMBER_BYTES or (ratio_cap and name != MANIFEST_NAME) or stored_lies:
            raise error(
                f"{path} member {name!r} declares {info.file_size} bytes from {info.compress_size} compressed (at most "
                f"{MAX_COMPRESSION_RATIO}x and {MAX_MEMBER_BYTES} bytes allowed); that is a zip bomb or corruption, "
                f"refusing it. {fix}"
            )
        declared += info.compress_size
        infos[name] = info
    if declared > size:  # members cannot overlap in a real archive: each one's bytes are its own
        raise error(
            f"{path}'s members declare {declared} compressed bytes but the file holds {size}: overlapping members, "
            f"a zip bomb or corruption; refusing it. {fix}"
        )
    if MANIFEST_NAME not in infos:
        raise error(f"{path} has no {MANIFEST_NAME}; it is not an edgetl archive. {fix}")
    return infos


def read_member(
    path: Path,
    info: zipfile.ZipInfo,
    limit: int,
    *,
    sha256: str | None = None,
    error: type[BundleError] = BundleError,
    integrity_error: type[BundleError] = BundleIntegrityError,
    fix: str = "Re-export it.",
) -> bytes:
    """At most ``limit`` bytes of one member, read from its raw bytes: stored members in one read, deflated ones
    inflated in 1 MiB steps and bounded by :data:`MAX_COMPRESSION_RATIO` times the compressed bytes consumed so
    far; the CRC, the size the entry declares and ``sha256`` (when given) are checked as it is read."""
    where = f"{path} member {info.filename!r}"
    if info.file_size > limit:
        raise error(f"{where} is {info.file_size} bytes, more than the {limit} allowed. {fix}")
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(_LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
            raise error(f"{where} has no valid local header: truncated or damaged. {fix}")
        fields = _LOCAL_HEADER.unpack(header)
        fh.seek(fields[-2] + fields[-1], 1)  # name and extra field
        if info.compress_type == zipfile.ZIP_STORED:
            data = fh.read(info.compress_size)  # one copy in memory
        else:
            data = _inflate(fh, info, limit, where, error, fix)
    digest = hashlib.sha256(data)
    if len(data) != info.file_size or zlib.crc32(data) != info.CRC:
        raise error(
            f"{where} fails its CRC or size check ({len(data)} bytes, declared {info.file_size}): the file was "
            f"modified or damaged. {fix}"
        )
    if sha256 is not None and digest.hexdigest() != sha256:
        raise integrity_error(
            f"{where} fails verification: {len(data)} bytes with sha256 {digest.hexdigest()[:16]}..., the manifest "
            f"promises {sha256[:16]}.... The file was modified or damaged; do not use it. {fix}"
        )
    return data


def _inflate(fh: BinaryIO, info: zipfile.ZipInfo, limit: int, where: str, error: type[BundleError], fix: str) -> bytes:
    """Inflate the raw deflate stream, never past ``limit`` nor 32x the compressed bytes consumed."""
    inflater = zlib.decompressobj(-15)
    out = bytearray()
    left, consumed, pending = info.compress_size, 0, b""
    while not inflater.eof:
        if not pending and left > 0:
            pending = fh.read(min(_CHUNK, left))
            left -= len(pending)
            if not pending:
                left = 0
        given = len(pending)
        try:
            chunk = inflater.decompress(pending, min(_CHUNK, limit + 1 - len(out)))
        except zlib.error as exc:
            raise error(f"{where} is not a valid deflate stream ({exc}): truncated or damaged. {fix}") from None
        out += chunk
        pending = inflater.unconsumed_tail
        consumed += given - len(pending) - len(inflater.unused_data)
        ratio_bound = MAX_COMPRESSION_RATIO * max(consumed, _RATIO_FLOOR)
        bound = limit if info.filename == MANIFEST_NAME else min(limit, ratio_bound)  # the manifest: 1 MiB cap
        if len(out) > bound:
            raise error(
                f"{where} inflates past {bound} bytes from {consumed} compressed (at most {MAX_COMPRESSION_RATIO}x "
                f"and the {limit} declared); a zip bomb or corruption, refusing it. {fix}"
            )
        if not chunk and not pending and left <= 0:
            break  # no input left and nothing more comes out
    if not inflater.eof:
        raise error(f"{where} ends before its deflate stream does: truncated or damaged. {fix}")
    return bytes(out)
