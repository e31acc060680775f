"""Fixtures of tiny real bundles (built by :mod:`tiny_bundles`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tiny_bundles import write_tiny_bundle


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    return write_tiny_bundle(tmp_path / "tiny.edgetl")


@pytest.fixture
def bundle_factory(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(1000))

    def make(**kwargs: object) -> Path:
        return write_tiny_bundle(tmp_path / f"b{next(counter)}.edgetl", **kwargs)  # type: ignore[arg-type]

    return make
