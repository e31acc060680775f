"""A small JSON file remembering which precision and kernel won on this device, so a second load is free.

Keyed by the bundle's model digests, the CPU's identity, the thread count and the onnxruntime and
edgetl-runtime versions: a cache copied from another machine, or written before an upgrade, simply
misses. A corrupt file is reported once and rewritten, never trusted; without a usable cache folder
every load measures.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from edgetl_runtime.atomic import atomic_write
from edgetl_runtime.warn import warn

CACHE_FORMAT = 1
CACHE_FILE = "backend-choices.json"
MAX_ENTRIES = 256
MAX_CACHE_BYTES = 1 << 20  # a few hundred entries; anything bigger is not ours


def read_regular_file(path: Path, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of ``path`` if it is a regular file (links followed), else an ``OSError``.

    Opened without blocking and checked on the open descriptor: a FIFO in the cache's place hung every load
    (issue 24, item 11), and a device file (``/dev/zero``) would never end.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(limit + 1)
    finally:
        os.close(fd)


def default_cache_dir() -> Path | None:
    """``$EDGETL_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgetl``, else ``~/.cache/edgetl``; None without a home."""
    if os.environ.get("EDGETL_CACHE_DIR"):
        return Path(os.environ["EDGETL_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "edgetl"
    try:
        home = Path.home()
    except RuntimeError:  # no HOME and no passwd entry (Python >= 3.12 raises)
        return None
    return home / ".cache" / "edgetl" if home.is_absolute() else None  # an unexpanded "~": no home either


def choice_key(model_digests: list[str], cpu_identity: str, threads: int | None, versions: str) -> str:
    text = json.dumps([sorted(model_digests), cpu_identity, threads, versions])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class ChoiceCache:
    """Read-through store of measured choices; every failure to read or write is one warning, not an error."""

    def __init__(self, folder: Path | None = None) -> None:
        folder = folder or default_cache_dir()
        self.path = None if folder is None else folder / CACHE_FILE  # None: nowhere to keep it, measure each load
        self._warned: set[str] = set()

    def _warn_once(self, message: str) -> None:
        """A corrupt file is seen by both ``get`` and ``put`` of one load: say it once."""
        if message not in self._warned:
            self._warned.add(message)
            warn(message)

    def _entries(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            raw = read_regular_file(self.path, MAX_CACHE_BYTES)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            self._warn_once(f"Cannot read the backend choice cache {self.path} ({exc}); measuring again.")
            return {}
        try:
            if len(raw) > MAX_CACHE_BYTES:
                raise ValueError(f"larger than {MAX_CACHE_BYTES} bytes")
            data = json.loads(raw)
            if (
                not isinstance(data, dict)
                or data.get("format") != CACHE_FORMAT
                or not isinstance(data["entries"], dict)
            ):
                raise ValueError("unexpected layout")
            return dict(data["entries"])
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            self._warn_once(
                f"The backend choice cache {self.path} is corrupt ({type(exc).__name__}: {str(exc)[:80]}); ignoring "
                "it and measuring again (it is rewritten with the new measurement)."
            )
            return {}

    def get(self, key: str, cpu_identity: str) -> dict[str, Any] | None:
        entry = self._entries().get(key)
        if not isinstance(entry, dict):
            return None
        if entry.get("cpu_identity") != cpu_identity or not isinstance(entry.get("precision"), str):
            self._warn_once(f"The backend choice cache {self.path} holds an entry from another CPU; measuring again.")
            return None
        return entry

    def put(self, key: str, entry: dict[str, Any]) -> None:
        if self.path is None:
            return
        entries = self._entries()
        entries.pop(key, None)
        entries[key] = entry
        while len(entries) > MAX_ENTRIES:  # oldest first: dicts keep insertion order
            entries.pop(next(iter(entries)))
        try:
            with atomic_write(self.path) as fh:
                fh.write(json.dumps({"format": CACHE_FORMAT, "entries": entries}, indent=1).encode())
        except OSError as exc:
            self._warn_once(f"Cannot write the backend choice cache {self.path} ({exc}); the next load measures again.")
