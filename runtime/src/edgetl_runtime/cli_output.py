"""What ``edgetl-device`` prints, and how it stops when the reader goes away (``predict ... | head``)."""

from __future__ import annotations

import os
import sys

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
