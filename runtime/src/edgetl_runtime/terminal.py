"""What the command lines print reaches a terminal: file names, labels and manifest strings are escaped.

An ESC sequence in a label can clear the screen or set the terminal's title, U+202E reverses the text after
it (``cat\\u202egnp.exe`` shows as ``catexe.png``), and a newline in a manifest field prints a forged line
(issue 24, item 12). Both CLIs route stdout and stderr through :func:`escaped_output`, so every print path
(results, reports, warnings, errors) is covered at once; :func:`escape` is for one value that must stay on
its line.
"""

from __future__ import annotations

import contextlib
import sys
import unicodedata
from collections.abc import Iterator
from typing import TextIO

# Format characters that reorder or hide text; the rest of category Cf (soft hyphen, ...) prints harmlessly.
_BIDI = frozenset(
    "\u061c\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2066\u2067\u2068\u2069\ufeff"
)


def _unsafe(char: str, keep: str) -> bool:
    if char in keep:
        return False
    return char in _BIDI or unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp")


def escape(text: str, keep: str = "") -> str:
    """``text`` with every control, bidirectional-format and line/paragraph-separator character written as a
    Python escape (``\\x1b``, ``\\u202e``, ``\\n``); characters in ``keep`` pass through."""
    if text.isprintable():  # the common case, one C-level pass
        return text
    return "".join(ascii(c)[1:-1] if _unsafe(c, keep) else c for c in text)


class _Escaping:
    """A text stream that escapes what it is given before passing it on; newlines and tabs stay layout."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(escape(text, keep="\n\t"))
        return len(text)

    def __getattr__(self, name: str) -> object:  # flush, fileno, isatty, encoding ...
        return getattr(self._stream, name)


@contextlib.contextmanager
def escaped_output() -> Iterator[None]:
    """stdout and stderr escaped for the duration (a CLI's ``main``)."""
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Escaping(out), _Escaping(err)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err


def one_line(text: str) -> str:
    """A message on one line: its lines joined with single spaces (a detail list follows its summary)."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
