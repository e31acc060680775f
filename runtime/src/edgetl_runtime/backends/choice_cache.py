"""A small JSON file remembering which precision and kernel won on this device, so a second load is free.

Keyed by the bundle's model digests, the CPU's identity, the thread count and the onnxruntime version:
a cache copied from another machine, or written before an upgrade, simply misses. A corrupt file is
reported and rewritten, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

from edgetl_runtime.atomic import atomic_write

CACHE_FORMAT = 1
CACHE_FILE = "backend-choices.json"
MAX_ENTRIES = 256


def default_cache_dir() -> Path:
    """``$EDGETL_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgetl``, else ``~/.cache/edgetl``."""
    if os.environ.get("EDGETL_CACHE_DIR"):
        return Path(os.environ["EDGETL_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgetl"


def choice_key(model_digests: list[str], cpu_identity: str, threads: int | None, runtime_version: str) -> str:
    text = json.dumps([sorted(model_digests), cpu_identity, threads, runtime_version])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class ChoiceCache:
    """Read-through store of measured choices; every failure to read or write is a warning, not an error."""

    def __init__(self, folder: Path | None = None) -> None:
        self.path = (folder or default_cache_dir()) / CACHE_FILE

    def _entries(self) -> dict[str, Any]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            warnings.warn(f"Cannot read the backend choice cache {self.path} ({exc}); measuring again.", stacklevel=3)
            return {}
        try:
            data = json.loads(text)
            if (
                not isinstance(data, dict)
                or data.get("format") != CACHE_FORMAT
                or not isinstance(data["entries"], dict)
            ):
                raise ValueError("unexpected layout")
            return dict(data["entries"])
        except (ValueError, KeyError, TypeError) as exc:
            warnings.warn(
                f"The backend choice cache {self.path} is corrupt ({exc}); ignoring it and measuring again "
                "(it is rewritten with the new measurement).",
                stacklevel=3,
            )
            return {}

    def get(self, key: str, cpu_identity: str) -> dict[str, Any] | None:
        entry = self._entries().get(key)
        if not isinstance(entry, dict):
            return None
        if entry.get("cpu_identity") != cpu_identity or not isinstance(entry.get("precision"), str):
            warnings.warn(
                f"The backend choice cache {self.path} holds an entry from another CPU; measuring again.", stacklevel=3
            )
            return None
        return entry

    def put(self, key: str, entry: dict[str, Any]) -> None:
        entries = self._entries()
        entries.pop(key, None)
        entries[key] = entry
        while len(entries) > MAX_ENTRIES:  # oldest first: dicts keep insertion order
            entries.pop(next(iter(entries)))
        try:
            with atomic_write(self.path) as fh:
                fh.write(json.dumps({"format": CACHE_FORMAT, "entries": entries}, indent=1).encode())
        except OSError as exc:
            warnings.warn(
                f"Cannot write the backend choice cache {self.path} ({exc}); the next load measures again.",
                stacklevel=3,
            )
