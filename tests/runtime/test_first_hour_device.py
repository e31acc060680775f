"""Issue 16 on the device: what a new user's first hour hits (arrays, rejection, the CLI's promises).

Each test fails on the code before the fix it covers; items are named in the test names.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_bundles import write_pngs

from edgetl_runtime.errors import InputError
from edgetl_runtime.images import as_image_list
from edgetl_runtime.learner import Learner
from edgetl_runtime.preprocess import PreprocessSpec, preprocess_batch

pytestmark = pytest.mark.runtime

TINY_SPEC = PreprocessSpec(input_size=(16, 16), crop_pct=1.0)


# ------------------------------------------------------------------ item 1: one array is one image


def _photo(h: int = 215, w: int = 215, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_one_hwc_array_is_one_image_not_h_samples(tiny_bundle: Path) -> None:
    img = _photo()
    assert len(as_image_list(img)) == 1
    assert preprocess_batch(img, TINY_SPEC).shape == (1, 3, 16, 16)
    learner = Learner.load(tiny_bundle, backend="onnxruntime")
    assert len(learner.add(img, "brick")) == 1
    learner.add(_photo(seed=1), "stone")
    assert learner.predict(img).shape == (1,)
    assert learner.predict_proba(img).shape == (1, 2)


@pytest.mark.parametrize(
    ("shape", "count"),
    [((20, 24), 1), ((20, 24, 1), 1), ((20, 24, 4), 1), ((5, 20, 24), 5), ((5, 20, 24, 3), 5), ((2, 20, 24, 1), 2)],
)
def test_documented_array_rule(shape: tuple[int, ...], count: int) -> None:
    arr = np.zeros(shape, np.uint8)
    assert len(as_image_list(arr)) == count
    assert len(preprocess_batch(arr, TINY_SPEC)) == count


@pytest.mark.parametrize(
    ("shape", "fix"),
    [((3, 20, 24), "transpose"), ((1, 20, 24), "list"), ((2, 3, 20, 24), "transpose"), ((2, 2, 20, 24, 3), "list")],
)
def test_ambiguous_arrays_are_refused_with_the_way_to_pass_them(shape: tuple[int, ...], fix: str) -> None:
    arr = np.zeros(shape, np.uint8)
    for call in (as_image_list, lambda a: preprocess_batch(a, TINY_SPEC)):
        with pytest.raises(InputError, match=fix):
            call(arr)


# ------------------------------------------------------------------ item 8: rejection from one class up


def _cluster(center: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.abs(center + 0.3 * rng.normal(size=(n, len(center))))


@pytest.mark.parametrize("kind", ["auto", "ridge", "ncm", "logistic"])
def test_one_enrolled_class_rejects_what_is_unlike_it(kind: str) -> None:
    from edgetl_runtime.heads import create_head

    rng = np.random.default_rng(0)
    cat, moon = np.abs(rng.normal(size=64)), np.abs(rng.normal(size=64))
    head = create_head(kind).fit(_cluster(cat, 20, 1), ["cat"] * 20)
    queries = np.concatenate([_cluster(cat, 10, 2), _cluster(moon, 10, 3)])
    labels = list(head.predict(queries, reject=True))
    # ~5 % of genuine cats fall below the 5 % quantile threshold by design; every moon is unknown.
    assert labels[10:] == ["unknown"] * 10 and labels[:10].count("cat") >= 8
    # What is thresholded is the similarity that is printed.
    sims = head.similarity(queries)
    assert [s >= head.reject_threshold_ for s in sims] == [lbl == "cat" for lbl in labels]
    # A second class joins incrementally: rejection stays calibrated, and a full fit agrees on the labels.
    dog = np.abs(rng.normal(size=64))
    head.partial_fit(_cluster(dog, 6, 4), ["dog"] * 6)
    assert np.isfinite(head.reject_threshold_)
    assert list(head.predict(_cluster(dog, 3, 5), reject=True)) == ["dog"] * 3


def _device(bundle: Path, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict, str]:
    from edgetl_runtime.cli import main

    code = main(["--bundle", str(bundle), "--backend", "onnxruntime", *argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 and out.strip() else {}), err


def test_cli_prints_the_thresholded_similarity_and_rejects_with_one_class(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("PIL")
    red = write_pngs(tmp_path / "red", (220, 30, 30), 6, 0)
    blue = write_pngs(tmp_path / "blue", (30, 30, 220), 2, 1)
    more_red = write_pngs(tmp_path / "more_red", (220, 30, 30), 2, 2)
    assert _device(tiny_bundle, "add", str(red), "--label", "cat", capsys=capsys)[0] == 0
    code, out, _ = _device(tiny_bundle, "predict", str(blue), str(more_red), "--reject", capsys=capsys)
    assert code == 0
    threshold = out["reject_threshold"]
    preds = out["predictions"]
    assert [p["label"] for p in preds] == ["unknown", "unknown", "cat", "cat"]
    for p in preds:  # the printed number is the one compared with the printed threshold
        assert (p["similarity"] >= threshold) == (p["label"] != "unknown")


# ------------------------------------------------------------------ item 7: one state for every precision and export


def test_enrolled_at_int8_the_cli_predicts_at_fp32_from_the_same_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("PIL")
    from tiny_bundles import tiny_onnx, write_tiny_bundle

    bundle = write_tiny_bundle(tmp_path / "m.edgetl", int8_model=tiny_onnx(scale=1.01))  # int8: another model
    red = write_pngs(tmp_path / "red", (220, 30, 30), 3, 0)
    green = write_pngs(tmp_path / "green", (30, 220, 30), 3, 1)
    for folder, label in ((red, "red"), (green, "green")):
        assert _device(bundle, "--precision", "int8", "add", str(folder), "--label", label, capsys=capsys)[0] == 0
    queries = write_pngs(tmp_path / "q", (220, 30, 30), 2, 5)
    code, out, err = _device(bundle, "--precision", "fp32", "predict", str(queries), capsys=capsys)
    assert code == 0, err
    assert [p["label"] for p in out["predictions"]] == ["red", "red"]
    assert "features for this model from kept images: 6/6" in err  # computed once, and said so
    code, out, err = _device(bundle, "--precision", "fp32", "info", capsys=capsys)
    assert code == 0 and "kept images" not in err  # stored: no second backbone pass
    assert [m["precision"] for m in out["state"]["models"]] == ["int8", "fp32"]
    assert all(m["samples_with_features"] == 6 for m in out["state"]["models"])


def test_a_re_exported_bundle_keeps_the_enrolments_and_forget_images_keeps_features(
    bundle_factory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("PIL")
    old, new, state = bundle_factory(seed=0), bundle_factory(seed=1), tmp_path / "device.sqlite"
    for name, colour, seed in (("red", (220, 30, 30), 0), ("green", (30, 220, 30), 1)):
        folder = str(write_pngs(tmp_path / name, colour, 3, seed))
        _device(old, "--state", str(state), "add", folder, "--label", name, capsys=capsys)
    code, out, err = _device(new, "--state", str(state), "info", capsys=capsys)
    assert code == 0, err
    assert out["classes"] == {"green": 3, "red": 3} and out["unavailable_to_this_model"] == {}
    code, out, _ = _device(new, "--state", str(state), "forget-images", capsys=capsys)
    assert code == 0 and out["images_deleted"] == 6 and out["state"]["images_kept"] == 0
    code, out, err = _device(old, "--state", str(state), "predict", str(tmp_path / "red"), capsys=capsys)
    assert code == 0 and [p["label"] for p in out["predictions"]] == ["red"] * 3  # both models have features


def test_cli_re_adding_features_only_images_under_another_precision_restores_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("PIL")
    from tiny_bundles import tiny_onnx, write_tiny_bundle

    bundle = write_tiny_bundle(tmp_path / "m.edgetl", int8_model=tiny_onnx(scale=1.01))
    red = write_pngs(tmp_path / "red", (220, 30, 30), 3, 0)
    green = write_pngs(tmp_path / "green", (30, 220, 30), 3, 1)
    assert (
        _device(
            bundle, "--precision", "int8", "--keep-images", "none", "add", str(red), "--label", "red", capsys=capsys
        )[0]
        == 0
    )
    assert _device(bundle, "--precision", "int8", "add", str(green), "--label", "green", capsys=capsys)[0] == 0
    code, out, err = _device(bundle, "--precision", "fp32", "add", str(red), "--label", "red", capsys=capsys)
    assert code == 0, err
    assert out["added"] == 0 and out["restored"] == 3 and "note" not in out and out["classes"] == {"green": 3, "red": 3}
    code, out, _ = _device(bundle, "--precision", "fp32", "info", capsys=capsys)
    assert out["unavailable_to_this_model"] == {"green": 3}  # green was not enrolled again at fp32


# ------------------------------------------------------------------ item 11: the device CLI keeps its promises


def _enrol_red_green(bundle: Path, tmp_path: Path, n: int, capsys: pytest.CaptureFixture[str]) -> None:
    for name, color, seed in (("red", (220, 30, 30), 0), ("green", (30, 220, 30), 1)):
        _device(bundle, "add", str(write_pngs(tmp_path / name, color, n, seed)), "--label", name, capsys=capsys)


def test_fit_prints_leave_one_out_quality(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("PIL")
    _enrol_red_green(tiny_bundle, tmp_path, 4, capsys)
    code, out, _ = _device(tiny_bundle, "fit", capsys=capsys)
    assert code == 0
    assert out["loo_accuracy"] == 1.0 and out["loo_scored_samples"] == 8
    assert isinstance(out["reject_threshold"], float)


def test_predict_accepts_a_folder(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("PIL")
    _enrol_red_green(tiny_bundle, tmp_path, 3, capsys)
    folder = write_pngs(tmp_path / "queries", (220, 30, 30), 3, 2)
    code, out, err = _device(tiny_bundle, "predict", str(folder), capsys=capsys)
    assert code == 0, err
    assert [p["label"] for p in out["predictions"]] == ["red"] * 3


def test_re_adding_the_same_images_is_reported_or_skipped(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("PIL")
    red = write_pngs(tmp_path / "r", (220, 30, 30), 3, 0)
    assert _device(tiny_bundle, "add", str(red), "--label", "red", capsys=capsys)[1]["added"] == 3
    code, out, _ = _device(tiny_bundle, "add", str(red), "--label", "red", "--skip-duplicates", capsys=capsys)
    assert code == 0 and out["added"] == 0 and out["already_enrolled"] == 3 and out["classes"] == {"red": 3}
    code, out, _ = _device(tiny_bundle, "add", str(red), "--label", "red", capsys=capsys)
    assert out["added"] == 3 and out["already_enrolled"] == 3 and "--skip-duplicates" in out["note"]
    learner = Learner.load(tiny_bundle, tiny_bundle.with_suffix(".state.sqlite"), backend="onnxruntime")
    with pytest.warns(UserWarning, match="enrolled already"):
        learner.add(list(red.iterdir()), "red")


def _all_actions(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_actions(sub)
        else:
            yield parser, action


def test_every_flag_has_help_and_defaults_show_and_version_exists(capsys) -> None:
    from edgetl_runtime.cli import build_parser

    parser = build_parser()
    undocumented = [a.dest for p, a in _all_actions(parser) if not a.help]
    assert undocumented == []
    assert "(default: auto)" in parser.format_help()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--version"])
    assert exc.value.code == 0 and "edgetl-device" in capsys.readouterr().out
