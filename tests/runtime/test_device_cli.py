"""Issue 21 on the device CLI: what a new user's first hour hits, round 2 (pipes, errors, restore, output).

Each test fails on the code before the fix it covers; items are named in the test names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgetl_runtime

pytestmark = pytest.mark.runtime


def _write_pngs(folder: Path, color: tuple[int, int, int], n: int, seed: int) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = np.clip(np.array(color) + rng.integers(-25, 26, size=(18 + i, 22, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return folder


def _device(bundle: Path, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict, str]:
    from edgetl_runtime.cli import main

    code = main(["--bundle", str(bundle), "--backend", "onnxruntime", *argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip().startswith("{") else {}), err


def _red_green(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], n: int = 3) -> None:
    for name, color, seed in (("red", (220, 30, 30), 0), ("green", (30, 220, 30), 1)):
        folder = _write_pngs(tmp_path / name, color, n, seed)
        assert _device(bundle, "add", str(folder), "--label", name, capsys=capsys)[0] == 0


# ------------------------------------------------------------------ item 1: `predict ... | head`


def test_item1_predict_into_a_closed_pipe_exits_quietly_without_a_traceback(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("PIL")
    _red_green(tiny_bundle, tmp_path, capsys)
    src = str(Path(edgetl_runtime.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    argv = ["--bundle", str(tiny_bundle), "--backend", "onnxruntime", "predict", str(tmp_path / "red")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgetl_runtime.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before anything is printed: every write meets a broken pipe
    err = proc.stderr.read().decode()
    proc.stderr.close()
    code = proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert code == 141  # 128 + SIGPIPE, what a shell reports for `yes | head`
