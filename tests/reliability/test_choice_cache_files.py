"""Issue 24, item 11: the backend-choice cache as a FIFO hung Learner.load and edgetl-device info forever.
Only a regular file is read (checked on the descriptor opened without blocking), with a size bound."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edgetl_runtime.backends.choice_cache import CACHE_FILE, ChoiceCache
from edgetl_runtime.learner import Learner

from ._support import REPO

pytestmark = pytest.mark.runtime


def _within(seconds: float, call: object) -> bool:
    worker = threading.Thread(target=call, daemon=True)  # type: ignore[arg-type]
    worker.start()
    worker.join(seconds)
    return not worker.is_alive()


@pytest.mark.parametrize("kind", ["fifo", "link-to-fifo", "link-to-dev-zero", "folder"])
def test_a_cache_that_is_not_a_regular_file_is_ignored_without_hanging(
    _private_choice_cache: Path, reliability_bundle: Path, kind: str
) -> None:
    path = _private_choice_cache / CACHE_FILE
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "link-to-fifo":
        os.mkfifo(_private_choice_cache / "pipe")
        path.symlink_to(_private_choice_cache / "pipe")
    elif kind == "link-to-dev-zero":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    with pytest.warns(UserWarning, match="backend choice cache"):
        assert _within(10, lambda: ChoiceCache(_private_choice_cache).get("k", "cpu"))

    def load() -> None:
        with Learner.load(reliability_bundle, backend="onnxruntime", precision="best"):
            pass

    assert _within(60, load), "Learner.load hung on the cache"


def test_device_info_does_not_hang_on_a_fifo_cache(_private_choice_cache: Path, reliability_bundle: Path) -> None:
    os.mkfifo(_private_choice_cache / CACHE_FILE)
    env = {**os.environ, "EDGETL_CACHE_DIR": str(_private_choice_cache)}
    argv = [sys.executable, "-m", "edgetl_runtime.cli", "--bundle", str(reliability_bundle), "--backend", "onnxruntime"]
    done = subprocess.run([*argv, "info"], check=False, capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
