"""Issue 24, items 12 and 13: what reaches the terminal. File names, labels and manifest strings are escaped in
everything both CLIs print (ESC sequences, U+202E, a newline forging a line); bidi overrides are refused in
labels; wrongly typed manifest fields of a hash-consistent bundle are a typed error where the manifest is
parsed, not an `edgetl inspect` traceback; and every error, `merge`'s included, is one line."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.cli import main as device_main
from edgetl_runtime.errors import BundleError
from edgetl_runtime.terminal import escape

from . import _hostile as H
from ._support import COLORS, class_images

pytestmark = pytest.mark.runtime
HOSTILE = ("\x1b]0;owned\x07", "\x1b[2J", "\u202e", "\x9b", "\u2066")


def _clean(text: str) -> None:
    for bad in (*HOSTILE, "\x1b", "\r"):
        assert bad not in text, repr(text)


def test_escape_writes_controls_and_bidi_as_escapes() -> None:
    assert escape("cat\u202egnp.exe") == "cat\\u202egnp.exe"
    assert escape("a\x1b[2Jb\nc") == "a\\x1b[2Jb\\nc"
    assert escape("a\nb", keep="\n") == "a\nb" and escape("café ✓") == "café ✓"


def test_device_cli_escapes_file_names_in_results_warnings_and_errors(
    reliability_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(class_images(COLORS["red"], 2, 0)):
        Image.fromarray(img).save(folder / f"{i}\x1b[2J\u202egnp.png")
    state = tmp_path / "s.sqlite"
    argv = ["--bundle", str(reliability_bundle), "--state", str(state), "--backend", "onnxruntime", "--head", "ncm"]
    assert device_main([*argv, "add", str(folder), "--label", "red"]) == 0
    assert device_main([*argv, "predict", str(folder)]) == 0
    missing = tmp_path / "no\x1b]0;owned\x07such.png"
    assert device_main([*argv, "predict", str(missing)]) == 2
    out, err = capsys.readouterr()
    _clean(out)
    _clean(err)
    assert len(err.strip().splitlines()) == 1


def test_device_cli_refuses_a_bidi_override_label(
    reliability_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(class_images(COLORS["red"], 1, 0)[0]).save(folder / "a.png")
    argv = ["--bundle", str(reliability_bundle), "--state", str(tmp_path / "s.sqlite"), "--backend", "onnxruntime"]
    assert device_main([*argv, "add", str(folder), "--label", "cat\u202egnp.exe"]) == 2
    _, err = capsys.readouterr()
    _clean(err)
    assert "U+202E" in err and len(err.strip().splitlines()) == 1


def _edit(where: str, value: Any) -> Any:
    def edit(doc: dict[str, Any]) -> None:
        section, key = where.split(".", 1)
        doc.setdefault(section, {})
        if section == "validation":
            doc[section][key] = {"size_ratio": value}
        elif "." in key:
            outer, inner = key.split(".")
            doc[section][outer] = {**doc[section].get(outer, {}), inner: value}
        else:
            doc[section][key] = value

    return edit


@pytest.mark.host
@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("head.counts", ["a", 1]),
        ("head.accuracy", "99 %"),
        ("quantization.guard", "passed"),
        ("validation.int8", "0.25"),
        ("quantization.guard.interval", ["low", "high"]),
        ("head.merged", [1, 2]),
    ],
)
def test_wrongly_typed_manifest_fields_are_a_typed_error_not_a_traceback(
    reliability_bundle: Path, tmp_path: Path, where: str, value: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgetl.cli import main as host_main

    bundle = H.resign(reliability_bundle, tmp_path / "typed.edgetl", edit=_edit(where, value))
    with pytest.raises(BundleError, match=where.replace(".", r"\.").replace(r"\.int8", r"\.int8")):
        Bundle.open(bundle)
    assert host_main(["inspect", str(bundle)]) == 2
    _, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.host
def test_inspect_escapes_manifest_strings_and_cannot_print_a_forged_line(
    reliability_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgetl.cli import main as host_main

    def edit(doc: dict[str, Any]) -> None:
        doc["backbone"]["name"] = "tiny\nbundle      FORGED (every member verified)\x1b[2J"
        doc["created"] = "2026\u202e"

    bundle = H.resign(reliability_bundle, tmp_path / "forged.edgetl", edit=edit)
    assert host_main(["inspect", str(bundle)]) == 0
    out, _ = capsys.readouterr()
    _clean(out)
    assert not any(line.startswith("bundle      FORGED") for line in out.splitlines())


@pytest.mark.host
def test_merge_errors_are_one_line_with_their_detail(
    reliability_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgetl.cli import main as host_main

    bad = tmp_path / "bad\x1b[2J.enrol"
    bad.write_bytes(b"not a zip")
    shutil.copy(bad, tmp_path / "worse.enrol")
    assert host_main(["merge", str(reliability_bundle), str(bad), str(tmp_path / "worse.enrol"), "-o", "m.edgetl"]) == 2
    _, err = capsys.readouterr()
    _clean(err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "2 enrolment file(s) refused" in lines[0] and "worse.enrol" in lines[0], lines
