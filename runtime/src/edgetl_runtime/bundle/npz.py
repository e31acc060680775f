"""Read a ``.npz`` without trusting it: every array's dtype, shape and byte count is checked before allocating.

``np.load`` allocates whatever an ``.npy`` header declares (2**40 rows: MemoryError) and inflates
compressed entries without a bound (a 0.31 MB member became 3.8 GB). Here the headers are parsed
first with numpy's own header readers on a bounded stream, the caller checks them against the
manifest, and only then is each array read, exactly its declared byte count. Entries must be
stored uncompressed, as ``np.savez`` (and so the bundle writer) stores them, so an array can never
be larger than the verified member that holds it.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from math import prod

import numpy as np
import numpy.typing as npt

from edgetl_runtime.errors import BundleError, raise_all

MAX_ENTRIES = 64  # golden and head hold 2-5 arrays
ALLOWED_KINDS = "biufcU"  # numbers and fixed-width text; never object, void/structured or bytes
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArrayHeader:
    """What an ``.npy`` entry declares, before any of its data is read."""

    key: str
    dtype: np.dtype[np.generic]
    shape: tuple[int, ...]
    fortran_order: bool
    offset: int  # bytes of magic + header before the data
    info: zipfile.ZipInfo = field(compare=False, repr=False)

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * self.dtype.itemsize  # Python ints: no overflow

    def describe(self) -> str:
        return f"{self.key!r} {self.dtype.str} {self.shape}"


HeaderCheck = Callable[[dict[str, ArrayHeader]], list[str]]


def read_npz(data: bytes, name: str, check: HeaderCheck) -> dict[str, npt.NDArray[np.generic]]:
    """Arrays of the archive ``data`` (member ``name``), once ``check(headers)`` found no problem.

    Raises:
        BundleError: not a plain uncompressed npz, an unsafe dtype, a byte count that does not
            match its header, or any problem ``check`` reports.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            headers = _headers(archive, name, len(data))
            raise_all(BundleError, check(headers), f"{name} in the bundle does not match its manifest; re-export it")
            return {key: _read_array(archive, header) for key, header in headers.items()}
    except BundleError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError, ValueError) as exc:
        raise BundleError(f"{name} in the bundle cannot be read as a numpy archive ({exc}); re-export it.") from None


def _headers(archive: zipfile.ZipFile, name: str, size: int) -> dict[str, ArrayHeader]:
    infos = archive.infolist()
    if len(infos) > MAX_ENTRIES:
        raise BundleError(f"{name} holds {len(infos)} entries, more than the {MAX_ENTRIES} allowed; re-export it.")
    problems: list[str] = []
    headers: dict[str, ArrayHeader] = {}
    for info in infos:
        entry = info.filename
        key = entry[:-4] if entry.endswith(".npy") else entry
        if not entry.endswith(".npy") or not key:
            problems.append(f"entry {entry!r} is not an .npy array")
        elif key in headers:
            problems.append(f"array {key!r} appears twice")
        elif info.compress_type != zipfile.ZIP_STORED:
            problems.append(
                f"array {key!r} is compressed (zip method {info.compress_type}); the bundle writer stores arrays "
                "uncompressed, and a compressed entry can inflate far beyond its size"
            )
        elif info.flag_bits & 0x1:
            problems.append(f"array {key!r} is encrypted")
        elif info.file_size > size:
            problems.append(f"array {key!r} declares {info.file_size} bytes in a {size}-byte archive")
        else:
            header, problem = _header(archive, info, key)
            if problem:
                problems.append(problem)
            elif header is not None:
                headers[key] = header
    raise_all(BundleError, problems, f"{name} in the bundle is not a plain numpy archive; re-export it")
    return headers


def _header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str) -> tuple[ArrayHeader | None, str | None]:
    """Parse one entry's ``.npy`` header (numpy caps it at 10 kB and parses it with ``literal_eval``)."""
    fmt = np.lib.format
    with archive.open(info) as fh:
        try:
            version = fmt.read_magic(fh)
            if version == (1, 0):
                shape, fortran_order, dtype = fmt.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran_order, dtype = fmt.read_array_header_2_0(fh)
            else:
                return None, f"array {key!r} has .npy format version {version}; only 1.0 and 2.0 are read"
        except Exception as exc:  # numpy's header parser raises ValueError, tokenize.TokenError, RecursionError ...
            return None, f"array {key!r} has no valid .npy header ({type(exc).__name__}: {exc})"
        offset = fh.tell()
    header = ArrayHeader(key, dtype, tuple(shape), bool(fortran_order), offset, info)
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in ALLOWED_KINDS or dtype.itemsize == 0:
        return (
            None,
            f"array {header.describe()} is not plain numbers or text (an object array needs pickle)",
        )
    if any(d < 0 for d in header.shape):
        return None, f"array {header.describe()} declares a negative dimension"
    if offset + header.nbytes != info.file_size:
        return None, (
            f"array {header.describe()} declares {header.nbytes} bytes of data, but its entry holds "
            f"{info.file_size - offset}"
        )
    return header, None


def _read_array(archive: zipfile.ZipFile, header: ArrayHeader) -> npt.NDArray[np.generic]:
    """Exactly ``header.nbytes`` bytes into an array allocated for them, in 1 MiB chunks."""
    count = prod(header.shape)
    flat = np.empty(count, dtype=header.dtype)  # (count,)
    raw = flat.view(np.uint8)  # (nbytes,)
    with archive.open(header.info) as fh:
        fh.read(header.offset)
        pos = 0
        while pos < header.nbytes:
            chunk = fh.read(min(_CHUNK, header.nbytes - pos))
            if not chunk:
                raise BundleError(
                    f"array {header.key!r} ends after {pos} of {header.nbytes} bytes; re-export the bundle."
                )
            raw[pos : pos + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            pos += len(chunk)
    return flat.reshape(header.shape, order="F" if header.fortran_order else "C")


def expect_array(
    headers: dict[str, ArrayHeader], key: str, kinds: str, shape: tuple[int | None, ...], *, required: bool = True
) -> list[str]:
    """Problems with array ``key``: missing (if ``required``), a dtype kind outside ``kinds``, or a shape that
    does not match ``shape`` (``None`` matches any length of that axis)."""
    header = headers.get(key)
    if header is None:
        return [f"array {key!r} is missing"] if required else []
    problems = []
    if header.dtype.kind not in kinds:
        problems.append(f"array {header.describe()} must have dtype kind {kinds!r}")
    if len(header.shape) != len(shape) or any(
        w is not None and w != d for d, w in zip(header.shape, shape, strict=True)
    ):
        want = tuple("*" if w is None else w for w in shape)
        problems.append(f"array {header.describe()} must have shape {want}")
    return problems
