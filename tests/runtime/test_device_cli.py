"""The device CLI as a user meets it: pipes, errors naming their files, restoring a shipped class, class
subfolders, CSV and top-k output, and the latency figures of `bench`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_bundles import write_pngs

import edgetl_runtime

pytestmark = pytest.mark.runtime


def _device(bundle: Path, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict, str]:
    from edgetl_runtime.cli import main

    code = main(["--bundle", str(bundle), "--backend", "onnxruntime", *argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip().startswith("{") else {}), err


def _red_green(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], n: int = 3) -> None:
    for name, color, seed in (("red", (220, 30, 30), 0), ("green", (30, 220, 30), 1)):
        folder = write_pngs(tmp_path / name, color, n, seed)
        assert _device(bundle, "add", str(folder), "--label", name, capsys=capsys)[0] == 0


# ---- `predict ... | head`


def test_predict_into_a_closed_pipe_exits_quietly_without_a_traceback(
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


# ---- errors a new user meets


def test_predict_before_any_add_names_the_cli_command(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("PIL")
    queries = write_pngs(tmp_path / "q", (220, 30, 30), 1, 0)
    code, _, err = _device(tiny_bundle, "predict", str(queries), capsys=capsys)
    assert code == 2
    assert "edgetl-device --bundle" in err and "add DIR --label NAME" in err
    assert "add(images, label)" not in err  # the Python call is no fix on the command line


def test_one_bad_image_is_named_the_others_predicted_and_the_run_fails(
    tiny_bundle: Path, tmp_path: Path, capsys
) -> None:
    pytest.importorskip("PIL")
    _red_green(tiny_bundle, tmp_path, capsys)
    queries = write_pngs(tmp_path / "q", (220, 30, 30), 2, 5)
    (queries / "broken.png").write_bytes(b"not a png")
    code, out, err = _device(tiny_bundle, "predict", str(queries), capsys=capsys)
    assert code == 1
    assert [Path(p["file"]).name for p in out["predictions"]] == ["0.png", "1.png"]
    assert [p["label"] for p in out["predictions"]] == ["red", "red"]
    assert [Path(f["file"]).name for f in out["failed"]] == ["broken.png"]
    assert "broken.png" in out["failed"][0]["error"] and "broken.png" in err


def test_add_names_every_bad_file_and_enrols_nothing(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("PIL")
    _red_green(tiny_bundle, tmp_path, capsys)
    folder = write_pngs(tmp_path / "blue", (30, 30, 220), 3, 2)
    (folder / "a_bad.png").write_bytes(b"junk")
    (folder / "z_bad.jpg").write_bytes(b"junk")
    code, _, err = _device(tiny_bundle, "add", str(folder), "--label", "blue", capsys=capsys)
    assert code == 2
    assert "a_bad.png" in err and "z_bad.jpg" in err and "2 of 5" in err and "Nothing was enrolled" in err
    assert _device(tiny_bundle, "info", capsys=capsys)[1]["classes"] == {"green": 3, "red": 3}


def test_a_failed_first_add_leaves_no_state_file(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("PIL")
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "0.png").write_bytes(b"junk")
    state = tiny_bundle.with_suffix(".state.sqlite")
    code, _, err = _device(tiny_bundle, "add", str(folder), "--label", "cat", capsys=capsys)
    assert code == 2 and "0.png" in err
    assert sorted(p.name for p in tiny_bundle.parent.iterdir() if p.name.startswith(state.name)) == []
    code, _, _ = _device(tiny_bundle, "add", str(tmp_path / "missing"), "--label", "cat", capsys=capsys)
    assert code == 2 and not state.exists()
    # A state that holds enrolments is never deleted by a later failure.
    _red_green(tiny_bundle, tmp_path, capsys)
    assert _device(tiny_bundle, "add", str(folder), "--label", "cat", capsys=capsys)[0] == 2
    assert state.exists()


# ---- class folders, recursion, output formats


def test_add_without_label_enrols_one_class_per_subfolder(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("PIL")
    photos = tmp_path / "photos"
    write_pngs(photos / "red", (220, 30, 30), 3, 0)
    write_pngs(photos / "green", (30, 220, 30), 2, 1)
    code, out, err = _device(tiny_bundle, "add", str(photos), capsys=capsys)
    assert code == 0, err
    assert out["added"] == {"green": 2, "red": 3} and out["classes"] == {"green": 2, "red": 3}
    assert "one class per subfolder" in out["note"]
    code, _, err = _device(tiny_bundle, "add", str(photos / "red"), capsys=capsys)  # no subfolders, no label
    assert code == 2 and "--label" in err


def test_predict_recurses_and_writes_csv_with_top_k(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("PIL")
    _red_green(tiny_bundle, tmp_path, capsys)
    queries = tmp_path / "q"
    write_pngs(queries / "inner", (220, 30, 30), 2, 5)
    code, out, _ = _device(tiny_bundle, "predict", str(queries), "--top-k", "2", capsys=capsys)
    assert code == 0 and [p["label"] for p in out["predictions"]] == ["red", "red"]
    assert [t["label"] for t in out["predictions"][0]["top_k"]] == ["red", "green"]
    from edgetl_runtime.cli import main

    argv = ["--bundle", str(tiny_bundle), "--backend", "onnxruntime", "predict", str(queries), "--format", "csv"]
    assert main([*argv, "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "file,label,probability,similarity,top_k,error"
    assert len(lines) == 3 and all(",red," in row and "red:" in row and "green:" in row for row in lines[1:])


def test_bench_reports_a_batch_and_the_spread_and_where_a_photos_time_goes(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """trtexec-like figures: --batch, --warmup, p95/max/std and images/s; --image times decode, preprocess,
    backbone and head apart and end to end."""
    _red_green(tiny_bundle, tmp_path, capsys)
    photo = sorted((tmp_path / "red").iterdir())[0]
    code, out, _ = _device(tiny_bundle, "bench", "--runs", "5", "--warmup", "2", "--batch", "4", "--image", str(photo),
                           capsys=capsys)  # fmt: skip
    assert code == 0 and out["batch"] == 4 and out["input"] == str(photo)
    assert out["cpu_line"] and "int8_kernel" in out  # what edgetl-device compare's report names, to compare by
    latency = out["latency_ms"]
    assert latency["runs"] == 5 and latency["warmup"] == 2 and latency["items_per_call"] == 4
    assert latency["min_ms"] <= latency["p50_ms"] <= latency["p95_ms"] <= latency["max_ms"] and latency["std_ms"] >= 0
    assert latency["throughput_per_s"] > 0
    e2e = out["end_to_end_ms"]
    assert set(e2e["stages_p50"]) == {"decode", "preprocess", "backbone", "head"} and e2e["note"] is None
    assert abs(sum(e2e["share"].values()) - 1) < 0.01 and e2e["total"]["p50_ms"] > 0
