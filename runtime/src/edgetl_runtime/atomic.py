"""Write files so that a crash leaves either the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from edgetl_runtime.errors import OutputError
from edgetl_runtime.outputs import output_error


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` sets while it reads,
    which would race with files other threads create)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "wb", check: Callable[[Path], object] | None = None
) -> Iterator[IO[bytes]]:
    """Yield a temp file beside ``path``; on success fsync and rename it over ``path``, else delete it.

    ``check`` gets the finished temp file before the rename: if it raises, ``path`` keeps its old
    content. The file keeps the permissions of the file it replaces, and a new one gets what a plain
    ``open`` would give (mkstemp's are owner-only). A file-system refusal (full disk, read-only file
    system, a folder in the way) is one :class:`~edgetl_runtime.errors.OutputError`, with nothing written.
    """
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"Cannot write {target}: it is a folder. Fix: name a file, e.g. FOLDER/name.ext.")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise (output_error(exc, target) or exc) from None
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            _set_mode(fh.fileno(), target)
            os.fsync(fh.fileno())
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        ours = isinstance(exc, OSError) and exc.filename in (None, tmp, str(target))  # not a file the body read
        converted = output_error(exc, target) if isinstance(exc, OSError) and ours else None
        if converted is not None:
            raise converted from None
        raise
    _fsync_dir(target.parent)


def _set_mode(fd: int, target: Path) -> None:
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except OSError:  # a new file
        mode = 0o666 & ~_umask()
    with contextlib.suppress(OSError):  # filesystems without permissions (CIFS, some FUSE) keep theirs
        os.fchmod(fd, mode)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
