"""Where a command may write: never over one of its own inputs, never over a file it did not make unless
told to (``--force``), and every file-system refusal as one :class:`OutputError` naming the fix.

An ``export`` whose output was the state it read replaced the enrolments with a zip (issue 24, item 1);
a full disk or an output that is a folder was a raw ``OSError`` traceback (item 2).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

from edgetl_runtime.errors import OutputError

# SQLite keeps a state's recent writes beside it; writing over one of these loses them as surely.
STATE_SIDE_FILES = ("-wal", "-shm", "-journal")
_WHY = {
    errno.ENOSPC: "the disk is full. Fix: free space and retry",
    errno.EDQUOT: "the disk quota is exhausted. Fix: free space and retry",
    errno.EFBIG: "the file is too large for this file system. Fix: write it elsewhere",
    errno.EROFS: "the file system is read-only. Fix: write to a writable folder (or remount it)",
    errno.EACCES: "permission denied. Fix: write to a folder you may write to",
    errno.EPERM: "permission denied. Fix: write to a folder you may write to",
    errno.EISDIR: "it is a folder. Fix: name a file, e.g. FOLDER/name.ext",
    errno.ENOTDIR: "a part of its folder path is a file, not a folder. Fix: choose another folder",
    errno.EEXIST: "a part of its folder path is a file, not a folder. Fix: choose another folder",
    errno.ENAMETOOLONG: "its name is too long. Fix: choose a shorter name",
    errno.EIO: "the storage reported an I/O error. Fix: check the disk, write elsewhere",
}
OUTPUT_ERRNOS = frozenset(_WHY)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()  # follows links: a link to the state is the state
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_output(
    output: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str] | None], *, force: bool
) -> Path:
    """``output`` if a command may write it, else an :class:`OutputError` saying why and how to fix it.

    Refused: an output that is one of ``inputs`` (same file through any link, hard or symbolic; a state's
    ``-wal``/``-shm``/``-journal`` files count as the state), a folder, a path under a file, and, without
    ``force``, any existing file.
    """
    out = Path(output)
    target = _identity(out)
    resolved = out.resolve(strict=False)
    for given in inputs:
        if given is None:
            continue
        for path in [Path(given), *(Path(f"{given}{side}") for side in STATE_SIDE_FILES)]:
            same = target is not None and target == _identity(path)
            if same or (resolved == path.resolve(strict=False) and path.exists()):
                raise OutputError(
                    f"Refusing to write {out}: it is {path}, which this command reads; writing it would destroy it. "
                    "Fix: name a new output file."
                )
    if out.is_dir():
        raise OutputError(f"Cannot write {out}: {_WHY[errno.EISDIR]}.")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"Cannot write {out}: {_WHY[errno.ENOTDIR]}.")
            break
    if (out.exists() or out.is_symlink()) and not force:
        raise OutputError(
            f"{out} exists already and this command did not make it. Fix: name a new file, or pass --force to "
            "replace it."
        )
    return out


def output_error(exc: OSError, path: str | os.PathLike[str]) -> OutputError | None:
    """The :class:`OutputError` for a file-system refusal while writing ``path``; None for other errors."""
    if isinstance(exc, OutputError) or exc.errno not in OUTPUT_ERRNOS:
        return None
    return OutputError(f"Cannot write {path}: {_WHY[exc.errno]}. Nothing was written.")
