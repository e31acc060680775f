"""Session-wide test isolation: a private choice cache per test, and a CPU family per test where it matters."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgetl_runtime.backends.cpu import SIMULATE_ENV, SIMULATED_FAMILIES, CpuInfo, this_cpu


@pytest.fixture(autouse=True)
def _private_choice_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own backend-choice cache, so no test reads another's (or the user's) timings."""
    folder = tmp_path_factory.mktemp("edgetl-cache")
    monkeypatch.setenv("EDGETL_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(params=SIMULATED_FAMILIES)
def each_cpu(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> CpuInfo:
    """Runs the test once as each CPU family the runtime decides for (x86 with and without VNNI, ARM64).

    For tests whose outcome depends on the CPU's *decisions* (kernel order, int8-target warnings,
    ``best``): they then pass on every machine, not only on the one CI happened to get. Arithmetic that
    depends on the real CPU (a kernel saturating) is tested against ``real_cpu()`` instead.
    """
    monkeypatch.setenv(SIMULATE_ENV, request.param)
    return this_cpu()
