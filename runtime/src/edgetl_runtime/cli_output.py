"""What ``edgetl-device`` prints, and how it stops when the reader goes away (``predict ... | head``)."""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path

from edgetl_runtime.errors import EdgeTLError

# A shell reports a tool killed by SIGPIPE as 128 + 13: what `yes | head` leaves in PIPESTATUS.
BROKEN_PIPE_EXIT = 141


def reader_gone() -> int:
    """After a BrokenPipeError on stdout: point stdout at /dev/null so the interpreter's final flush cannot
    raise again (Python's own advice, docs 'signal' / 'Note on SIGPIPE'), and return the exit code to use."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.__stdout__.fileno() if sys.__stdout__ else 1)
        os.close(devnull)
    except OSError:  # stdout was never a file descriptor (an embedding host): nothing left to flush
        pass
    return BROKEN_PIPE_EXIT


def discard_state(state: Path) -> None:
    """Delete a state file this command created and left empty (with its SQLite side files): a failed first
    ``add`` must not leave a database that later commands mistake for an enrolment."""
    for path in (state, *(state.with_name(state.name + side) for side in ("-wal", "-shm", "-journal"))):
        path.unlink(missing_ok=True)


# The library's errors name the Python call; on the command line the fix is a command.
_PYTHON_TO_CLI = (
    (
        "call add(images, label) for a class first",
        "enrol a class first: edgetl-device --bundle {bundle} add DIR --label NAME",
    ),
    (
        "call add(images, label) for at least one class first",
        "enrol a class first: edgetl-device --bundle {bundle} add DIR --label NAME",
    ),
)


def for_the_cli(exc: EdgeTLError, bundle: Path) -> EdgeTLError:
    """``exc``, its fix worded as the ``edgetl-device`` command to run where it named a Python call."""
    message = str(exc)
    for python, cli in _PYTHON_TO_CLI:
        message = message.replace(python, cli.format(bundle=bundle))
    return exc if message == str(exc) else type(exc)(message)


def predictions_csv(result: dict[str, object]) -> str:
    """``predict``'s result as CSV: one row per file (failed files with their error), top-k as ``label:p;...``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "label", "probability", "similarity", "top_k", "error"])
    for p in result["predictions"]:  # type: ignore[attr-defined]
        top = ";".join(f"{t['label']}:{t['probability']}" for t in p.get("top_k", []))
        writer.writerow([p["file"], p["label"], p["probability"], p["similarity"], top, ""])
    for f in result.get("failed", []):  # type: ignore[attr-defined]
        writer.writerow([f["file"], "", "", "", "", f["error"]])
    return buffer.getvalue().rstrip("\n")
