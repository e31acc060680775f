"""Memory bounds: what a refused bundle, a zip member, an image or a class list may cost.

A hostile bundle is refused within 64 MiB of its own baseline (peak memory measured in a child process, with a
control showing the meter sees a bomb). What a zip member may cost is bounded by the bytes the file really
holds: the shared reader (bundle/safe_zip.py) refuses declared compressed sizes that do not fit in the file,
inflates each member streaming with at most 32x the compressed bytes it consumed, and checks each member (CRC,
SHA-256) as it is read. Images over the pixel limit, kept rows declaring huge images and class counts over
the limit are refused before anything is allocated or stored."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest

from edgetl_runtime.bundle.safe_zip import checked_entries, read_member
from edgetl_runtime.enrolment import read_enrolment
from edgetl_runtime.errors import BundleError, EnrolmentError

from ._support import HERE, MAX_REFUSED_GROWTH_MIB, control_bomb_memory, refused_bundle_memory

pytestmark = pytest.mark.runtime
MiB = 1 << 20


# ---------------------------------------------------------------------------------------------- refused bundles


def test_refused_bundles_stay_within_64_mib_of_the_baseline(reliability_bundle: Path, tmp_path: Path) -> None:
    """Every bundle of _hostile.memory_corpus is refused with a typed error, each within 64 MiB of its own peak."""
    result = refused_bundle_memory(reliability_bundle, tmp_path)
    rows = {r["bundle"]: r for r in result["rows"]}
    assert result["not_refused"] == 0, rows
    assert result["worst_mib"] <= MAX_REFUSED_GROWTH_MIB, rows
    assert rows["graph-reduces-batch-hidden"]["outcome"] == "BackendError"  # the golden run, typed


def test_the_memory_meter_sees_a_bomb(reliability_bundle: Path, tmp_path: Path) -> None:
    """Counts, not claims: np.load on the same npz bomb (the reader before round 2) shows its 256 MiB."""
    assert control_bomb_memory(reliability_bundle, tmp_path) > 4 * MAX_REFUSED_GROWTH_MIB


# ---------------------------------------------------------------------------------------------- zip members


def _deflated_zeros(size: int) -> bytes:
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    return b"".join(comp.compress(bytes(MiB)) for _ in range(size // MiB)) + comp.flush()


def _declare(path: Path, member: str, compressed: int) -> None:
    """Patch ``member``'s declared compressed size in its local and central headers."""
    data, name = bytearray(path.read_bytes()), member.encode()
    for signature, (csize_at, len_at, name_at) in {b"PK\x03\x04": (18, 26, 30), b"PK\x01\x02": (20, 28, 46)}.items():
        at = data.find(signature)
        while at >= 0:
            length = int.from_bytes(data[at + len_at : at + len_at + 2], "little")
            if bytes(data[at + name_at : at + name_at + length]) == name:
                data[at + csize_at : at + csize_at + 4] = compressed.to_bytes(4, "little")
            at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))


def _hostile_enrolment(path: Path, members: int, inflated: int, *, name: str = "images") -> Path:
    """An enrolment file whose deflate members inflate to ``inflated`` zero bytes each while declaring 2 MiB
    compressed (ratio 32: the declared check passes). ``images`` members declare 2 MiB they do not hold; the
    ``npz`` member really holds 2 MiB: its deflate stream, then junk after the stream's end (the sizes fit)."""
    stream = _deflated_zeros(inflated)
    if name != "images":
        stream += bytes(2 * MiB - len(stream))
    digest = hashlib.sha256(bytes(inflated)).hexdigest()
    crc = zlib.crc32(bytes(inflated))
    names = [f"images/{i:064x}.png" for i in range(members)] if name == "images" else ["enrolment.npz"]
    listed = {n: {"sha256": digest, "size": inflated} for n in names}
    arrays = b"not read: the members before it are the attack"
    tail = bytes(2 * MiB)  # last in the file, so the last member's declared 2 MiB lie within it
    if name == "images":
        listed["enrolment.npz"] = {"sha256": hashlib.sha256(arrays).hexdigest(), "size": len(arrays)}
        listed[f"images/{'f' * 64}.png"] = {"sha256": hashlib.sha256(tail).hexdigest(), "size": len(tail)}
    manifest = {
        "format": "edgetl-enrolment",
        "format_version": 1,
        "model_digest": "0" * 64,
        "precision": "fp32",
        "backbone": "tiny",
        "feature_dim": 16,
        "preprocess_key": "x",
        "head_digest": None,
        "samples": 1,
        "counts": {"a": 1},
        "removed_shipped_labels": [],
        "images": len(listed) - 1,
        "members": listed,
        "created": "2026-01-01T00:00:00+00:00",
        "versions": {},
    }
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("manifest.json", json.dumps(manifest))
        for n in names:
            info = zipfile.ZipInfo(n)
            info.compress_type = zipfile.ZIP_STORED  # written raw, relabelled below
            archive.writestr(info, stream)
        if name == "images":
            archive.writestr("enrolment.npz", arrays)
            archive.writestr(f"images/{'f' * 64}.png", tail)
    data = bytearray(path.read_bytes())
    for n in names:  # deflate, the real inflated size and CRC, 2 MiB compressed
        for signature, (method_at, crc_at, size_at, len_at, name_at) in {
            b"PK\x03\x04": (8, 14, 22, 26, 30),
            b"PK\x01\x02": (10, 16, 24, 28, 46),
        }.items():
            at = data.find(signature)
            while at >= 0:
                length = int.from_bytes(data[at + len_at : at + len_at + 2], "little")
                if bytes(data[at + name_at : at + name_at + length]) == n.encode():
                    data[at + method_at : at + method_at + 2] = (8).to_bytes(2, "little")
                    data[at + crc_at : at + crc_at + 4] = crc.to_bytes(4, "little")
                    data[at + size_at : at + size_at + 4] = inflated.to_bytes(4, "little")
                at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))
    for n in names:
        _declare(path, n, 2 * MiB)  # true for the npz member, a lie for the images
    return path


def test_declared_compressed_sizes_that_do_not_fit_in_the_file_are_refused_before_reading(tmp_path: Path) -> None:
    path = _hostile_enrolment(tmp_path / "bomb.enrol", 8, 64 * MiB)
    assert path.stat().st_size < 3 * MiB  # 8 x 64 MiB from a 2.5 MB file
    with zipfile.ZipFile(path) as archive, pytest.raises(BundleError, match=r"declare .* compressed bytes"):
        checked_entries(archive, path)
    with pytest.raises(EnrolmentError):
        read_enrolment(path)


def test_inflation_is_bounded_by_the_bytes_consumed_not_the_declared_size(tmp_path: Path) -> None:
    path = _hostile_enrolment(tmp_path / "npz.enrol", 1, 64 * MiB, name="npz")
    with zipfile.ZipFile(path) as archive:
        infos = checked_entries(archive, path)  # the declared sizes fit: the reader must catch it while inflating
    with pytest.raises(BundleError, match="inflates past"):
        read_member(path, infos["enrolment.npz"], 64 * MiB)


_CHILD = """
import sys, json
sys.path.insert(0, {here!r})
from _memory_child import reset_peak, peak_mib
from edgetl_runtime.enrolment import read_enrolment
from edgetl_runtime.errors import EdgeTLError
for path in sys.argv[1:]:
    base, reset = reset_peak()
    try:
        read_enrolment(path)
        outcome = "read"
    except EdgeTLError as exc:
        outcome = type(exc).__name__
    print(json.dumps({{"file": path, "outcome": outcome, "peak_mib": round(peak_mib(reset) - base, 1)}}))
"""


def test_hostile_enrolment_files_are_refused_within_64_mib(tmp_path: Path) -> None:
    files = [
        _hostile_enrolment(tmp_path / "eight.enrol", 8, 64 * MiB),
        _hostile_enrolment(tmp_path / "twenty.enrol", 20, 64 * MiB),
        _hostile_enrolment(tmp_path / "npz.enrol", 1, 64 * MiB, name="npz"),
    ]
    done = subprocess.run(
        [sys.executable, "-c", _CHILD.format(here=str(HERE)), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 3 and all(r["outcome"] == "EnrolmentError" for r in rows), rows
    assert max(r["peak_mib"] for r in rows) <= MAX_REFUSED_GROWTH_MIB, rows


# ---------------------------------------------------------------------------------------------- images, classes


def test_an_image_over_the_pixel_limit_is_refused_or_decoded_reduced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from edgetl_runtime import images
    from edgetl_runtime.errors import InputError

    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100 * 100)  # the rule, at a size a test can afford
    Image.new("RGB", (300, 200), (200, 10, 10)).save(tmp_path / "big.png")
    Image.new("RGB", (300, 200), (200, 10, 10)).save(tmp_path / "big.jpg", quality=95)
    Image.new("RGB", (100, 100), (200, 10, 10)).save(tmp_path / "fits.png")
    with pytest.raises(InputError, match="more than the 10,000"):
        images.load_image(tmp_path / "big.png")
    reduced = images.load_image(tmp_path / "big.jpg")  # decoded at 1/2 in the JPEG decoder, never full size
    assert reduced.shape == (100, 150, 3) or reduced.shape[0] * reduced.shape[1] <= 100 * 100
    assert images.load_image(tmp_path / "fits.png").shape == (100, 100, 3)


def test_a_kept_row_declaring_a_huge_image_is_damage_without_allocating_it() -> None:
    from edgetl_runtime.errors import StateError
    from edgetl_runtime.state.image_policy import decode_pixels

    blob = zlib.compress(bytes(12000 * 3))  # one row of the 12000 x 12000 it declares
    with pytest.raises(StateError, match="more than"):
        decode_pixels(blob, 12000, 12000, "image x", "k" * 64)


def test_classes_beyond_the_limit_are_refused_before_anything_is_stored(
    reliability_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgetl_runtime import arguments
    from edgetl_runtime.errors import InputError
    from edgetl_runtime.learner import Learner

    from ._support import COLORS, class_images, sample_rows

    monkeypatch.setattr(arguments, "MAX_CLASSES", 2)
    state = tmp_path / "s.sqlite"
    with Learner.load(reliability_bundle, state, backend="onnxruntime", head="ncm") as learner:
        learner.add(class_images(COLORS["red"], 2, 0), "red")
        learner.add(class_images(COLORS["green"], 2, 1), "green")
        learner.add(class_images(COLORS["green"], 1, 5), "green")  # a known class is always fine
        before = sample_rows(state)
        with pytest.raises(InputError, match="at most 2"):
            learner.add(class_images(COLORS["blue"], 2, 2), "blue")
        assert sample_rows(state) == before


def test_a_shipped_head_beyond_the_class_limit_is_refused_before_its_arrays_are_read(
    reliability_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from edgetl_runtime.bundle import head_format
    from edgetl_runtime.heads import ClassStats, Prior
    from edgetl_runtime.learner import Learner

    from .test_shipped_head_values import _ship

    rng = np.random.default_rng(0)
    X = np.abs(rng.standard_normal((9, 16))).astype(np.float32)
    prior = Prior(ClassStats.from_features(X, ["a", "b", "c"] * 3), alpha=0.01, temperature=0.1)
    bundle = _ship(reliability_bundle, tmp_path / "h.edgetl", prior)
    monkeypatch.setattr(head_format, "MAX_CLASSES", 2)
    with pytest.raises(BundleError, match="3 classes, more than the 2"):
        Learner.load(bundle, backend="onnxruntime")


def test_device_add_decodes_a_folder_a_batch_at_a_time(
    reliability_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from edgetl_runtime import cli, cli_add

    from ._support import COLORS, class_images

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(class_images(COLORS["red"], 5, 0)):
        Image.fromarray(img).save(folder / f"{i}.png")
    seen: list[int] = []
    decode = cli_add.decode_each
    monkeypatch.setattr(cli_add, "decode_each", lambda files: seen.append(len(files)) or decode(files))
    monkeypatch.setattr(cli_add, "ADD_BATCH", 2)
    argv = ["--bundle", str(reliability_bundle), "--state", str(tmp_path / "s.sqlite"), "--backend", "onnxruntime"]
    assert cli.main([*argv, "add", str(folder), "--label", "red"]) == 0
    assert seen == [2, 2, 1, 2, 1]  # every file checked first, then enrolled; the first batch is not decoded twice
