"""Issue 24, items 1 and 2: what a command writes. An output that is one of its inputs (the state, the bundle,
through any link) is refused, an existing file is replaced only with --force, and a file-system refusal
(full disk, read-only file system, a folder in the way) is one line and exit 2 with nothing half-written."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from edgetl_runtime.cli import main as device_main
from edgetl_runtime.errors import OutputError
from edgetl_runtime.learner import Learner

from ._support import COLORS, class_images, snapshot

pytestmark = pytest.mark.runtime


@pytest.fixture
def device(reliability_bundle: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the tiny bundle beside a state holding two classes."""
    bundle = tmp_path / "b.edgetl"
    bundle.write_bytes(reliability_bundle.read_bytes())
    state = tmp_path / "s.sqlite"
    with Learner.load(bundle, state, backend="onnxruntime", head="ncm") as learner:
        learner.add(class_images(COLORS["red"], 3, 0), "red")
        learner.add(class_images(COLORS["green"], 3, 1), "green")
    return bundle, state


def _export(bundle: Path, state: Path, output: Path | str, *extra: str) -> int:
    argv = ["--bundle", str(bundle), "--state", str(state), "--backend", "onnxruntime", "--head", "ncm"]
    return device_main([*argv, "export", str(output), *extra])


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("which", ["state", "bundle", "state-link", "bundle-hardlink", "state-wal"])
def test_export_refuses_an_output_that_is_an_input(
    device: tuple[Path, Path], tmp_path: Path, which: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, state = device
    with Learner.load(bundle, state, backend="onnxruntime", head="ncm"):  # holds the -wal file open
        if which == "state-link":
            (tmp_path / "link.enrol").symlink_to(state)
        if which == "bundle-hardlink":
            os.link(bundle, tmp_path / "hard.enrol")
        output = {
            "state": state,
            "bundle": bundle,
            "state-link": tmp_path / "link.enrol",
            "bundle-hardlink": tmp_path / "hard.enrol",
            "state-wal": Path(f"{state}-wal"),
        }[which]
        before = snapshot(tmp_path)
        assert _export(bundle, state, output, "--force") == 2  # --force never replaces an input
        assert "reads" in _one_line_error(capsys)
        assert snapshot(tmp_path) == before
    with Learner.load(bundle, state, backend="onnxruntime", head="ncm") as learner:
        assert learner.store.counts() == {"green": 3, "red": 3}


def test_export_replaces_an_existing_file_only_with_force(
    device: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, state = device
    precious = tmp_path / "notes.txt"
    precious.write_text("not ours")
    assert _export(bundle, state, precious) == 2
    assert "--force" in _one_line_error(capsys) and precious.read_text() == "not ours"
    assert _export(bundle, state, precious, "--force") == 0
    with Learner.load(bundle, state, backend="onnxruntime", head="ncm") as learner, pytest.raises(OutputError):
        learner.export_enrolment(state)  # the library refuses an input too


@pytest.mark.parametrize("case", ["folder", "parent-is-a-file", "disk-full", "read-only"])
def test_export_file_system_errors_are_one_line_and_write_nothing(
    device: tuple[Path, Path],
    tmp_path: Path,
    case: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bundle, state = device
    output = tmp_path / "out.enrol"
    if case == "folder":
        output.mkdir()
    if case == "parent-is-a-file":
        (tmp_path / "afile").write_text("x")
        output = tmp_path / "afile" / "out.enrol"
    if case == "disk-full":

        def full(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr("edgetl_runtime.atomic.os.fsync", full)
    if case == "read-only":
        import tempfile

        def read_only(*a: object, **k: object) -> tuple[int, str]:
            raise OSError(errno.EROFS, "Read-only file system", str(tmp_path))

        monkeypatch.setattr(tempfile, "mkstemp", read_only)
    before = snapshot(tmp_path)
    assert _export(bundle, state, output) == 2
    line = _one_line_error(capsys)
    assert "Cannot write" in line and "Fix" in line, line
    assert snapshot(tmp_path) == before


@pytest.mark.host
@pytest.mark.parametrize("case", ["bundle", "enrolment", "folder", "disk-full", "exists"])
def test_merge_refuses_inputs_and_reports_file_system_errors_in_one_line(
    device: tuple[Path, Path],
    tmp_path: Path,
    case: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edgetl.cli import main as host_main

    bundle, state = device
    enrol = tmp_path / "d.enrol"
    assert _export(bundle, state, enrol) == 0
    capsys.readouterr()
    output = {"bundle": bundle, "enrolment": enrol}.get(case, tmp_path / "merged.edgetl")
    if case == "folder":
        output.mkdir()
    if case == "exists":
        output.write_text("someone's file")
    if case == "disk-full":

        def full(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr("edgetl_runtime.atomic.os.fsync", full)
    before = snapshot(tmp_path)
    assert host_main(["merge", str(bundle), str(enrol), "-o", str(output)]) == 2
    _one_line_error(capsys)
    assert snapshot(tmp_path) == before
