"""Issue 14, "close what an outside attack found": each cause, its control (the attack is real) and its fix.

The corpus (test_bad_input_corpus.py) shows each hostile input ends in its exact typed error and changes
nothing; these tests show what the corpus cannot: that the attacks were live, that the fixes keep valid
inputs working (16-bit PNGs, rotated photos, numpy id arrays, NFC labels, read-only states), the memory a
refused bundle costs, and what another process's enrolment does to a running Learner.
"""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgetl_runtime.bundle.graph_check import check_features, io_problems
from edgetl_runtime.bundle.manifest import Manifest
from edgetl_runtime.bundle.npz import read_npz
from edgetl_runtime.bundle.onnx_scan import MAX_DEPTH, external_references
from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.errors import (
    BackendError,
    BundleError,
    InputError,
    StateError,
    StateFullError,
    StateLockedError,
    StateReadOnlyError,
    StateWriteError,
)
from edgetl_runtime.learner import Learner
from edgetl_runtime.state.store import FeatureStore

from . import _hostile as H
from ._support import (
    COLORS,
    MAX_REFUSED_GROWTH_MIB,
    REPO,
    class_images,
    control_bomb_memory,
    refused_bundle_memory,
)

pytestmark = pytest.mark.runtime
RED, GREEN, BLUE = (class_images(COLORS[c], 3, i) for i, c in enumerate(("red", "green", "blue")))


def _load(bundle: Path, state: Path | None = None, **kw: object) -> Learner:
    return Learner.load(bundle, state, backend="onnxruntime", head="ncm", **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- 1, 2: bombs


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


def test_zipfile_inflates_bzip2_without_a_bound(tmp_path: Path, reliability_bundle: Path) -> None:
    """Control for cause 1: zipfile asked for a few bytes of a bzip2 member inflates far more (here 64 MiB)."""
    bomb = H.bomb_bundle(reliability_bundle, tmp_path / "b.edgetl", "golden.npz", zipfile.ZIP_BZIP2, 64 * H.MiB)
    assert bomb.stat().st_size < 16_000
    with zipfile.ZipFile(bomb) as archive, archive.open("golden.npz") as fh:
        decompressor = fh._decompressor  # type: ignore[attr-defined]
        with pytest.raises(zipfile.BadZipFile, match="CRC"):  # only after inflating all of it
            fh.read(10)
        assert decompressor.eof  # the whole 64 MiB stream went through one decompress call for 10 bytes
    with pytest.raises(BundleError, match="compression method 12"):
        Bundle.open(bomb)


def test_the_npz_reader_round_trips_what_numpy_writes() -> None:
    arrays = {
        "c": np.arange(12, dtype=np.float32).reshape(3, 4),
        "f": np.asfortranarray(np.arange(6, dtype=">f8").reshape(2, 3)),
        "u": np.array(["a", "bé"]),
        "e": np.zeros((0, 5), np.int16),
        "s": np.array(7, np.int64),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    got = read_npz(buffer.getvalue(), "t.npz", lambda headers: [])
    assert set(got) == set(arrays)
    for key, value in arrays.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape and np.array_equal(got[key], value)
        assert got[key].flags.writeable


def test_the_npz_reader_checks_headers_before_reading_any_array() -> None:
    seen = []
    data = H.npz(H.golden_entries(inputs__npy=H.npy((2**40, 3, 16, 16), data=bytes(64))))
    with pytest.raises(BundleError, match="declares 3377699720527872 bytes"):
        read_npz(data, "golden.npz", lambda headers: seen.append(headers) or [])
    assert seen == []  # byte counts are checked even before the manifest check sees the headers
    with pytest.raises(BundleError, match="must be 7"):
        read_npz(H.npz(H.golden_entries()), "golden.npz", lambda headers: ["rows must be 7"])


def test_the_writers_head_passes_the_header_checks(reliability_bundle: Path, tmp_path: Path) -> None:
    """A head.npz as edgetl.export._head_npz writes it (through the writer's npz_bytes) reads back unchanged."""
    from edgetl_exporters.bundle_writer import npz_bytes, write_bundle

    original = Bundle.open(reliability_bundle)
    arrays = {
        "kind": np.array("linear"),
        "coef": np.ones((3, 16), np.float32),
        "intercept": np.zeros(3, np.float32),
        "classes": np.array(["dark", "mid", "bright"], dtype=str),
    }
    manifest = original.manifest.__class__(**{**vars(original.manifest), "head_labels": ("dark", "mid", "bright")})
    bundle = write_bundle(tmp_path / "h.edgetl", manifest, {**original.members, "head.npz": npz_bytes(arrays)})
    head = bundle.head_arrays()
    assert head is not None and all(np.array_equal(head[k], v) for k, v in arrays.items())


# ---------------------------------------------------------------------------------------------- 3: external data


def test_external_data_is_a_live_attack_and_is_refused(
    reliability_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control: onnxruntime, given the model's bytes, reads 'secret.key' from the current directory. The bundle
    carrying the same model is refused, and nothing reads the file."""
    ort = pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    model = H.external_model("initializer", "secret.key")
    images = np.ones((1, 3, 4, 4), np.float32)
    Path("secret.key").write_bytes(np.full((16, 3, 1, 1), 7, np.float32).tobytes())
    first = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"images": images})[0]
    Path("secret.key").write_bytes(np.full((16, 3, 1, 1), -7, np.float32).tobytes())
    second = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"images": images})[0]
    assert not np.allclose(first, second)  # the features are computed from the file's bytes
    bad = H.resign(reliability_bundle, tmp_path / "x.edgetl", backbone__fp32__onnx=model)
    opened = []
    real_open = open

    def spy_open(file: object, *args: object, **kwargs: object) -> object:
        opened.append(str(file))
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", spy_open)
    with pytest.raises(BundleError, match=r"location 'secret\.key'"):
        _load(bad)
    assert not any("secret.key" in f for f in opened)


@pytest.mark.parametrize(
    "where", ["initializer", "constant", "tensors_attribute", "subgraph", "sparse", "function", "training"]
)
def test_the_scan_finds_external_data_wherever_a_tensor_can_sit(where: str) -> None:
    found = external_references(H.external_model(where))
    assert len(found) >= 1 and all("secret.key" in f for f in found), found


def test_the_scan_passes_self_contained_models(reliability_bundle: Path) -> None:
    onnx = pytest.importorskip("onnx")
    assert (
        external_references(
            Bundle.open(reliability_bundle).model_bytes(Bundle.open(reliability_bundle).resolve_precision("fp32"))
        )
        == []
    )
    model = onnx.load_from_string(H.external_model("subgraph"))  # the same places, the data inline
    for attribute in model.graph.node[-1].attribute:
        for tensor in attribute.g.initializer:
            tensor.ClearField("external_data")
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = np.ones(48, np.float32).tobytes()
    assert external_references(model.SerializeToString()) == []


def test_the_scan_is_linear_and_bounded() -> None:
    """10,000 initialisers scan in well under a second; nesting is capped at protobuf's own depth."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(np.full(4, i, np.float32), f"t{i}") for i in range(10_000)]
    graph = helper.make_graph([], "many", [], [], initializer=inits)
    data = helper.make_model(graph).SerializeToString()
    start = time.perf_counter()
    assert external_references(data) == []
    assert time.perf_counter() - start < 1.0
    assert external_references(H.nested_protobuf(MAX_DEPTH // 3 - 1)) == []
    with pytest.raises(BundleError, match="nest deeper"):
        external_references(H.nested_protobuf(MAX_DEPTH))
    assert onnx is not None


# ---------------------------------------------------------------------------------------------- 4: graph vs manifest


def _arg(name: str, shape: list[object], kind: str = "tensor(float)") -> SimpleNamespace:
    return SimpleNamespace(name=name, shape=shape, type=kind)


def test_every_graph_mismatch_is_listed_at_once(reliability_bundle: Path) -> None:
    manifest = Bundle.open(reliability_bundle).manifest
    problems = io_problems(
        [_arg("pixels", [1, 3, 64, 64], "tensor(float16)"), _arg("scale", [1])],
        [_arg("features", ["batch", 16, 1], "tensor(int64)")],
        manifest,
    )
    text = "\n".join(problems)
    assert len(problems) == 4, problems
    assert "needs inputs ['pixels', 'scale']" in text and "no input 'images'" in text and "tensor(int64)" in text
    assert io_problems([_arg("images", ["N", 3, 16, 16])], [_arg("features", ["N", 16])], manifest) == []
    assert io_problems([_arg("images", [])], [_arg("features", [])], manifest) == []  # unknown rank: run-time check


def test_outputs_are_checked_at_run_time_too() -> None:
    with pytest.raises(BackendError, match=r"shape \(1, 16\) for 3 inputs"):
        check_features(np.zeros((1, 16), np.float32), 3, 16, "b")
    with pytest.raises(BackendError, match="expected floats"):
        check_features(np.zeros((3, 16), np.int64), 3, 16, "b")
    assert check_features(np.zeros((3, 16), np.float64), 3, 16, "b").dtype == np.float32


def test_a_graph_that_fails_on_other_batch_sizes_is_a_backend_error(reliability_bundle: Path, tmp_path: Path) -> None:
    """Declared and inferred (batch, D), right for the golden's 3 rows, but rows [0, 1, 2] gathered inside:
    the first run of 1 image (the load's batch-1 timing, or a prediction) is a BackendError, not an onnxruntime
    exception."""
    model = H.onnx_model(tail="hidden_gather3")
    bad = H.resign(reliability_bundle, tmp_path / "r.edgetl", backbone__fp32__onnx=model)
    with pytest.raises(BackendError, match=r"failed on a batch of shape \(1, 3, 16, 16\)"):
        with _load(bad) as learner:  # the batch-1 timing of precision="best" may already meet it
            learner.features(RED[:1])
    static = H.resign(reliability_bundle, tmp_path / "s.edgetl", backbone__fp32__onnx=H.onnx_model(tail="reshape3"))
    with pytest.raises(BackendError, match="fixed batch axis 3"):  # the visible variant is refused at load
        _load(static)


# ---------------------------------------------------------------------------------------------- 5: preprocessing


def test_the_resize_product_is_bounded_not_each_factor(reliability_bundle: Path) -> None:
    manifest = Bundle.open(reliability_bundle).manifest
    doc = manifest.to_json()
    for size, crop, ok in ((4096, 0.875, True), (4096, 0.75, True), (4096, 0.7, False), (4096, 0.1, False)):
        edited = doc.replace('"crop_pct": 1.0', f'"crop_pct": {crop}').replace(
            "16,\n      16", f"{size},\n      {size}"
        )
        if ok:
            assert Manifest.from_json(edited).preprocess.resize_size ** 2 <= 1 << 25
        else:
            with pytest.raises(BundleError, match="resizes every image"):
                Manifest.from_json(edited)


# ---------------------------------------------------------------------------------------------- 7: images


def test_postscript_reaches_pillow_but_not_the_runtime(tmp_path: Path) -> None:
    """Control: Pillow identifies a PostScript file named .jpg as EPS (and would call Ghostscript to decode it)."""
    image = pytest.importorskip("PIL.Image")
    from edgetl_runtime.images import load_image

    path = tmp_path / "photo.jpg"
    path.write_bytes(H.EPS)
    with image.open(path) as im:
        assert im.format == "EPS"
    with pytest.raises(InputError, match="identified by its content"):
        load_image(path)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    image = pytest.importorskip("PIL.Image")
    from edgetl_runtime.images import load_image

    values = np.array([[0, 257, 32896, 65535]], np.uint16)  # 8-bit 0, 1, 128, 255
    for fmt in ("PNG", "TIFF"):
        path = tmp_path / f"g16.{fmt.lower()}"
        image.fromarray(values).save(path, format=fmt)
        with image.open(path) as im:
            assert im.mode.startswith("I")  # the 16-bit path is the one exercised
            assert np.asarray(im.convert("RGB"))[0, :, 0].tolist() == [0, 255, 255, 255]  # control: Pillow clips
        assert load_image(path)[0, :, 0].tolist() == [0, 1, 128, 255]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = pytest.importorskip("PIL.Image")
    from edgetl_runtime.images import load_image

    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white, as stored
    exif = image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    image.fromarray(pixels).save(path, exif=exif, quality=95)
    shown = load_image(path)
    assert shown.shape == (40, 20, 3)
    assert shown[:20].mean() > 200 and shown[20:].mean() < 50  # the white half is on top once displayed


def test_a_sixteen_bit_png_enrols(reliability_bundle: Path, tmp_path: Path) -> None:
    image = pytest.importorskip("PIL.Image")
    path = tmp_path / "g16.png"
    image.fromarray(np.full((20, 24), 40000, np.uint16)).save(path)
    with _load(reliability_bundle) as learner:
        assert learner.add([path], "gray") == [1]


# ---------------------------------------------------------------------------------------------- 8: state write errors


def _sqlite_error(text: str, code: int) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError(text)
    exc.sqlite_errorcode = code  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize(
    ("text", "code", "error"),
    [
        ("database is locked", 5, StateLockedError),
        ("attempt to write a readonly database", 8, StateReadOnlyError),
        ("attempt to write a readonly database", 1544, StateReadOnlyError),  # SQLITE_READONLY_DIRECTORY
        ("database or disk is full", 13, StateFullError),
        ("disk I/O error", 10, StateWriteError),
        ("unable to open database file", 14, StateWriteError),
        ("database disk image is malformed", 11, StateError),
    ],
)
def test_each_sqlite_failure_has_its_own_error_and_a_truthful_fix(text: str, code: int, error: type) -> None:
    from edgetl_runtime.state.database import state_error

    for exc in (_sqlite_error(text, code), sqlite3.OperationalError(text)):  # with and without sqlite_errorcode
        got = state_error(exc, "s.sqlite", "Enrolling into", 10.0)
        assert type(got) is error
        advises_delete = "delete the state file" in str(got)
        assert advises_delete == (error is StateError), str(got)  # only real damage is told to delete


def test_a_locked_state_still_opens_and_predicts(reliability_bundle: Path, tmp_path: Path) -> None:
    from edgetl_runtime.state import store as cache

    state = tmp_path / "s.sqlite"
    with _load(reliability_bundle, state) as learner:
        learner.add(RED, "red")
    holder = sqlite3.connect(state, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    saved, cache.BUSY_TIMEOUT_S = cache.BUSY_TIMEOUT_S, 0.2
    try:
        with _load(reliability_bundle, state) as learner:
            with pytest.warns(RuntimeWarning, match="not cached"):
                assert learner.predict(GREEN[:1]).tolist() == ["red"]
            with pytest.raises(StateLockedError, match="do not delete it"):
                learner.add(GREEN, "green")
    finally:
        cache.BUSY_TIMEOUT_S = saved
        holder.close()
    with _load(reliability_bundle, state) as learner:
        assert learner.add(GREEN, "green")  # the lock gone, the same file takes writes again


def test_a_full_disk_is_a_typed_error_that_loses_nothing(reliability_bundle: Path, tmp_path: Path) -> None:
    state = tmp_path / "s.sqlite"
    with _load(reliability_bundle, state) as learner:
        learner.add(RED, "red")
        db = learner.store.connection.db
        db.execute(f"PRAGMA max_page_count={db.execute('PRAGMA page_count').fetchone()[0]}")
        many = [np.random.default_rng(i).integers(0, 256, (12, 14, 3), dtype=np.uint8) for i in range(200)]
        with warnings.catch_warnings(), pytest.raises(StateFullError, match="free space"):
            warnings.simplefilter("ignore", RuntimeWarning)
            learner.add(many, "many")
        assert learner.counts() == {"red": 3} and learner.store.integrity_check() == []


@pytest.mark.parametrize("how", ["chmod", "sqlite-read-only-open"])
def test_a_read_only_state_predicts_and_refuses_enrolment_truthfully(
    how: str, reliability_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state SQLite can only open read-only: predict works (features not cached), add is a StateReadOnlyError
    whose fix is chmod, not delete, and the file is byte-for-byte unchanged.

    ``chmod``: the file mode, as a non-root user meets it (root writes through modes, so it is skipped as root).
    ``sqlite-read-only-open``: SQLite's own read-only open (``mode=ro``), which is what SQLite silently falls
    back to for an unwritable file, so the store sees the very same thing.
    """

    state = tmp_path / "s.sqlite"
    with _load(reliability_bundle, state) as learner:
        learner.add(RED, "red")
        learner.add(GREEN, "green")
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root writes through file modes; the sqlite-read-only-open case covers the same store path")
        state.chmod(0o444)
    else:
        real_connect = sqlite3.connect

        def read_only(where: str, **kwargs: object) -> sqlite3.Connection:
            if kwargs.pop("uri", False):  # already a URI (the learner's own read-only peek): leave it alone
                return real_connect(where, uri=True, **kwargs)  # type: ignore[arg-type]
            return real_connect(f"file:{where}?mode=ro", uri=True, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(sqlite3, "connect", read_only)  # the one sqlite3 module every connection comes from
    before = state.read_bytes()
    try:
        with _load(reliability_bundle, state) as learner:
            assert learner.store.read_only
            assert learner.predict(BLUE[:1] + RED[:1]).tolist()[1] == "red"
            assert learner.store.put_features({"k": np.zeros(16, np.float32)}) is False  # not cached, no error
            with pytest.raises(StateReadOnlyError, match="chmod u\\+w") as info:
                learner.add(BLUE, "blue")
            assert "delete" not in str(info.value)
            with pytest.raises(StateReadOnlyError):
                learner.remove(label="red")
            assert learner.counts() == {"green": 3, "red": 3}
    finally:
        state.chmod(0o644)
    assert state.read_bytes() == before and not Path(f"{state}-journal").exists()


# ---------------------------------------------------------------------------------------------- 9: schema


def test_a_planted_trigger_would_have_eaten_the_row(reliability_bundle: Path, tmp_path: Path) -> None:
    """Control: with the trigger SQLite itself deletes the row add just returned; the store refuses the file."""
    state = tmp_path / "s.sqlite"
    with _load(reliability_bundle, state) as learner:
        learner.add(RED, "red")
    con = sqlite3.connect(state)
    con.execute("CREATE TRIGGER eat AFTER INSERT ON samples BEGIN DELETE FROM samples WHERE id = NEW.id; END")
    con.execute("INSERT INTO samples (label, image) SELECT 'x', hash FROM images LIMIT 1")
    assert con.execute("SELECT count(*) FROM samples WHERE label = 'x'").fetchone() == (0,)
    con.commit()
    con.close()
    with pytest.raises(StateError, match="trigger 'eat'") as info:
        _load(reliability_bundle, state)
    assert "drop them with the sqlite3 tool" in str(info.value)


def test_the_schema_check_accepts_exactly_what_it_creates(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    FeatureStore(path, model_digest="d", feature_dim=4, preprocess_key="p").close()
    store = FeatureStore(path, model_digest="d", feature_dim=4, preprocess_key="p")  # reopens its own file
    assert store.integrity_check() == []
    store.close()


# ---------------------------------------------------------------------------------------------- 10, 11: labels, ids


def test_labels_are_nfc_so_two_spellings_are_one_class(reliability_bundle: Path) -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    with _load(reliability_bundle) as learner:
        learner.add(RED, composed)
        learner.add(GREEN[:1], decomposed)
        learner.add(BLUE[:1], "\U0001f468\u200d\U0001f469\u200d\U0001f467 family")  # ZWJ is not a control character
        assert learner.counts()[composed] == 4
        assert learner.remove(label=decomposed) == 4
        assert learner.store.labels() == ["\U0001f468\u200d\U0001f469\u200d\U0001f467 family"]


def test_numpy_id_arrays_are_accepted(reliability_bundle: Path) -> None:
    with _load(reliability_bundle) as learner:
        ids = learner.add(RED + GREEN, ["red"] * 3 + ["green"] * 3)
        assert learner.remove(ids=np.array(ids[:2])) == 2
        assert learner.remove(ids=np.array(ids[2:4], dtype=np.uint32)) == 2
        assert learner.remove(ids=(np.int64(ids[4]),)) == 1
        assert learner.remove(ids=np.array([], dtype=np.int64)) == 0
        assert learner.store.samples()[0].tolist() == [ids[5]]


def test_threads_in_range_still_work(reliability_bundle: Path) -> None:
    with _load(reliability_bundle, threads=np.int64(1)) as learner:
        assert learner.backend is not None


# ---------------------------------------------------------------------------------------------- 12: other processes


def test_a_running_learner_sees_another_connections_enrolments(reliability_bundle: Path, tmp_path: Path) -> None:
    """Semantics: predict, predict_proba, classes_ and head see every add/remove committed by any process before
    the call (PRAGMA data_version, then a count/sum-of-ids token); a neighbour's cache writes do not refit."""
    state = tmp_path / "s.sqlite"
    with _load(reliability_bundle, state) as mine, _load(reliability_bundle, state) as other:
        mine.add(RED, "red")
        other.add(GREEN, "green")
        assert sorted(mine.classes_) == ["green", "red"]
        assert mine.predict(GREEN[:1]).tolist() == ["green"]
        fits = []
        real_fit = mine.keeper.fit  # the head keeper refits when it finds the head stale
        mine.keeper.fit = lambda: fits.append(1) or real_fit()  # type: ignore[method-assign]
        other.predict(class_images(COLORS["gray"], 2, 9))  # caches features: data_version moves, samples do not
        mine.predict(RED[:1])
        assert fits == []
        other.remove(label="red")
        assert mine.classes_.tolist() == ["green"] and fits == [1]
        other.add(BLUE, "blue")
        mine.add(RED[:1], "red")  # a stale head is refit, not updated in place: blue must not be lost
        assert sorted(mine.classes_) == ["blue", "green", "red"]


_ENROL_CHILD = """
import sys, numpy as np
from edgetl_runtime.learner import Learner
with Learner.load(sys.argv[1], sys.argv[2], backend="onnxruntime", head="ncm") as learner:
    print(learner.add([np.full((12, 14, 3), (30, 30, 220), np.uint8)], "blue"))
"""


def test_a_running_learner_sees_another_process_enrol(reliability_bundle: Path, tmp_path: Path) -> None:
    state = tmp_path / "s.sqlite"
    with _load(reliability_bundle, state) as learner:
        learner.add(RED, "red")
        assert learner.classes_.tolist() == ["red"]
        done = subprocess.run(
            [sys.executable, "-c", _ENROL_CHILD, str(reliability_bundle), str(state)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert learner.classes_.tolist() == ["blue", "red"]
        assert learner.predict(BLUE[:1]).tolist() == ["blue"]


def test_the_threat_model_names_only_tests_that_exist() -> None:
    """docs/threat-model.md lists each threat with the test covering it: every test and corpus case it names must
    exist, and the corpus size it states must be the real one."""
    import ast
    import re

    text = (REPO / "docs" / "threat-model.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(test_[a-z0-9_]+\.py)::(test_[a-z0-9_]+)`", text))
    assert len(named) >= 20, "the threat model should name the tests that cover each threat"
    missing = []
    for file, test in sorted(named):
        path = REPO / "tests" / "reliability" / file
        tree = ast.parse(path.read_text(encoding="utf-8")) if path.exists() else None
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)} if tree else set()
        if test not in names:
            missing.append(f"{file}::{test}")
    assert missing == [], missing
    from .test_bad_input_corpus import CASES

    kinds = "bundle|image|label|remove|predict|state|option|cli"
    cases = set(re.findall(rf'"((?:{kinds})-[A-Za-z0-9._-]+)"', text))
    assert len(cases) >= 100 and sorted(cases - set(CASES)) == [], sorted(cases - set(CASES))
    counts = re.findall(r"\b(\d+) cases\b", text)
    assert str(len(CASES)) in counts, f"the threat model gives the corpus size as {counts}, it has {len(CASES)}"
