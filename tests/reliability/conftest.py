"""Fixtures for the reliability suite; the tiny bundle comes from tests/tiny_bundles.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._support import write_tiny_bundle


@pytest.fixture(scope="module")
def reliability_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny real bundle per module (the tests only read it)."""
    return write_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny.edgetl")
