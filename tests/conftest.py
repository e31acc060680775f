"""Session-wide test isolation."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _private_choice_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own backend-choice cache, so no test reads another's (or the user's) timings."""
    folder = tmp_path_factory.mktemp("edgetl-cache")
    monkeypatch.setenv("EDGETL_CACHE_DIR", str(folder))
    return folder
