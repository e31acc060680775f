"""Installed versions of edgetl's distributions: the one place that asks, for every report and key."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["distribution_version", "runtime_versions"]

UNKNOWN = "unknown (not installed)"


def distribution_version(name: str = "edgetl-runtime") -> str:
    """``name``'s installed version, or :data:`UNKNOWN` when it runs from a source tree."""
    try:
        return version(name)
    except PackageNotFoundError:
        return UNKNOWN


def runtime_versions() -> dict[str, str]:
    """``{"edgetl-runtime": version}`` for the files a device writes (empty when not installed)."""
    found = distribution_version()
    return {} if found == UNKNOWN else {"edgetl-runtime": found}
