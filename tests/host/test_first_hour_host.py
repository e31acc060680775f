"""Issue 16 on the host: what a new user's first hour hits (their own folders, export defaults, errors).

Each test fails on the code before the fix it covers; items are named in the test names. The data
are small real pictures (skimage's sample photos) saved as PNG and JPEG files of mixed sizes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from user_photos import write_class_folders

from edgetl.cli import main
from edgetl_runtime.errors import DatasetError

pytestmark = pytest.mark.host


def cli(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ item 2: train/val folder layouts


def test_train_val_layout_is_read_as_splits_not_as_two_classes(tmp_path: Path) -> None:
    from edgetl.datasets import folder_layout, load_image_splits
    from edgetl.sources import load_data

    write_class_folders(tmp_path / "split" / "train", n=4)
    write_class_folders(tmp_path / "split" / "val", n=2, seed=5)
    assert folder_layout(tmp_path / "split") == "splits"
    splits = load_image_splits(tmp_path / "split")
    assert set(splits) == {"train", "val"}
    assert splits["train"].classes == splits["val"].classes == ["chelsea", "coffee"]
    assert len(splits["train"]) == 8 and len(splits["val"]) == 4
    assert load_data(str(tmp_path / "split")).classes == ["chelsea", "coffee"]


def test_finetune_uses_the_splits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgetl.cli import build_parser
    from edgetl.commands.finetune import split_rule
    from edgetl.sources import load_splits

    write_class_folders(tmp_path / "split" / "train", n=4)
    write_class_folders(tmp_path / "split" / "val", n=2, seed=5)
    write_class_folders(tmp_path / "split" / "test", n=3, seed=9)
    args = build_parser().parse_args(
        ["finetune", "mobilenetv3_small_100", "--data", str(tmp_path / "split"), "-o", str(tmp_path / "run")]
    )
    train, val, test = load_splits(args.data, split_rule(args))
    assert train.classes == ["chelsea", "coffee"] and len(train) == 8
    assert val is not None and len(val) == 4 and test is not None and len(test) == 6


@pytest.mark.parametrize(
    ("layout", "match"),
    [
        (("train/a.png", "val/b.png"), "no class folders"),
        (("train/cat/a.png", "cat/b.png"), "mixes split folders"),
        (("cat/train/a.png", "cat/val/b.png", "dog/train/c.png", "dog/val/d.png"), "themselves split"),
        (("val/cat/a.png", "test/cat/b.png"), "no train"),
    ],
)
def test_layouts_that_would_mislabel_are_refused(tmp_path: Path, layout: tuple[str, ...], match: str) -> None:
    from PIL import Image

    from edgetl.datasets import load_image_folder

    for rel in layout:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / rel)
    with pytest.raises(DatasetError, match=match):
        load_image_folder(tmp_path)


# ------------------------------------------------------------------ items 6, 10, 11: errors at the first command


def test_hub_offline_fails_fast_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    code, _, err = cli("export", "mobilenetv3_small_100", "--weights", "hub", "--precision", "fp32",
                       "-o", str(tmp_path / "m.edgetl"), capsys=capsys)  # fmt: skip
    assert code == 2 and time.perf_counter() - start < 20
    assert len(err.strip().splitlines()) == 1 and "--weights bundled" in err


def test_unreachable_hub_endpoint_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    from edgetl.backbones import create_backbone
    from edgetl_runtime.errors import CheckpointError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="unreachable"):
        create_backbone("mobilenetv3_small_100", "hub")
    assert time.perf_counter() - start < 20


def test_weights_none_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli("export", "mobilenetv3_small_100", "--weights", "none", "--precision", "fp32",
                       "--image-size", "64", "-o", str(tmp_path / "m.edgetl"), capsys=capsys)  # fmt: skip
    assert code == 0 and "random" in err and "warning" in err


def test_tf_same_padding_size_is_refused_by_finetune_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_class_folders(tmp_path / "photos", n=3)
    start = time.perf_counter()
    code, _, err = cli("finetune", "tf_efficientnet_lite0", "--data", str(tmp_path / "photos"),
                       "--image-size", "100", "-o", str(tmp_path / "run"), capsys=capsys)  # fmt: skip
    assert code == 2 and "multiples of 32" in err and "96 or 128" in err
    assert len(err.strip().splitlines()) == 1 and time.perf_counter() - start < 30
    assert not (tmp_path / "run").exists()


def test_parity_failure_is_one_line() -> None:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from edgetl_exporters.onnx_export import validate_parity
    from edgetl_runtime.errors import ParityError

    nodes = [helper.make_node("GlobalAveragePool", ["images"], ["p"]), helper.make_node("Flatten", ["p"], ["features"])]
    graph = helper.make_graph(
        nodes,
        "gap",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(32, 3, 8, 8)).astype(np.float32)
    with pytest.raises(ParityError) as exc:
        validate_parity(model.SerializeToString(), inputs, rng.normal(size=(32, 3)).astype(np.float32))
    assert len(str(exc.value).splitlines()) == 1 and "32 of 32 inputs" in str(exc.value)


def test_export_of_a_missing_run_folder_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli("export", str(tmp_path / "runs" / "nope"), "--precision", "fp32",
                       "-o", str(tmp_path / "m.edgetl"), capsys=capsys)  # fmt: skip
    assert code == 2 and "does not exist" in err and "Unknown backbone" not in err


def _all_actions(parser):  # type: ignore[no-untyped-def]
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {where}", a) for where, a in _all_actions(sub))
        else:
            yield "", action


def test_every_flag_has_help_defaults_show_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    from edgetl.cli import build_parser

    parser = build_parser()
    undocumented = [f"{where}{a.dest}" for where, a in _all_actions(parser) if not a.help]
    assert undocumented == []
    finetune = parser._subparsers._group_actions[0].choices["finetune"]  # type: ignore[union-attr]
    assert "(default: linear-probe)" in finetune.format_help()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--version"])
    assert exc.value.code == 0 and "edgetl" in capsys.readouterr().out


def test_finetune_reads_a_saved_run_config(tmp_path: Path) -> None:
    from edgetl.cli import build_parser
    from edgetl.commands.finetune import resolve_config_file

    saved = {"command": {"model": "mobilenetv3_small_100", "strategy": "partial", "freeze_stages": 2,
                         "epochs": 4, "image_size": 64, "data": "fashion-mnist"}}  # fmt: skip
    (tmp_path / "run.json").write_text(json.dumps(saved))
    args = build_parser().parse_args(
        ["finetune", "--config", str(tmp_path / "run.json"), "--epochs", "2", "-o", str(tmp_path / "r")]
    )
    args = resolve_config_file(args)
    assert (args.model, args.strategy, args.freeze_stages, args.image_size) == (
        "mobilenetv3_small_100",
        "partial",
        2,
        64,
    )
    assert args.epochs == 2  # the command line wins over the file


# ------------------------------------------------------------------ items 3, 4, 5: what export calibrates on


@pytest.fixture
def no_fashion_mnist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fashion-MNIST is not on disk (EDGETL_FASHION_MNIST points at an empty folder)."""
    (tmp_path / "no-fmnist").mkdir()
    monkeypatch.setenv("EDGETL_FASHION_MNIST", str(tmp_path / "no-fmnist"))


def test_fp32_export_needs_no_dataset(
    tmp_path: Path, no_fashion_mnist: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgetl_runtime.bundle.reader import Bundle

    code, _, err = cli("export", "tf_efficientnet_lite0", "--precision", "fp32,fp16", "--image-size", "64",
                       "-o", str(tmp_path / "m.edgetl"), capsys=capsys)  # fmt: skip
    assert code == 0, err
    assert [p.value for p in Bundle.open(tmp_path / "m.edgetl").manifest.precisions] == ["fp32", "fp16"]


def test_int8_without_calibration_data_is_refused_with_the_fix(
    tmp_path: Path, no_fashion_mnist: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli("export", "tf_efficientnet_lite0", "--precision", "fp32,int8", "--image-size", "64",
                       "-o", str(tmp_path / "m.edgetl"), capsys=capsys)  # fmt: skip
    assert code == 2 and "--calib" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.edgetl").exists()


def test_a_finetuned_run_calibrates_on_its_own_data(tmp_path: Path, no_fashion_mnist: None) -> None:
    from edgetl.backbones import create_backbone
    from edgetl.datasets import load_image_folder
    from edgetl.export import BundleConfig, export_bundle
    from edgetl.finetune import FinetuneConfig, finetune

    photos = write_class_folders(tmp_path / "photos", n=14)
    data = load_image_folder(photos)
    backbone = create_backbone("mobilenetv3_small_100", "none", image_size=64)
    config = FinetuneConfig.linear_probe(epochs=1, val_fraction=0, progress=False)
    record = {"data": {"source": str(photos), "classes": None}}
    finetune(backbone, data, None, None, config, tmp_path / "run", provenance=record)
    assert json.loads((tmp_path / "run" / "edgetl_config.json").read_text())["data"]["source"] == str(photos)
    bundle_config = BundleConfig(("fp32", "int8"), calibration_count=8, eval_count=20, max_accuracy_drop=100.0)
    result = export_bundle(tmp_path / "run", tmp_path / "m.edgetl", config=bundle_config)
    calibration = result.bundle.manifest.calibration
    source = calibration["source"]
    assert source.startswith(f"{photos.name}/") and str(tmp_path) not in source and "fashion" not in source.lower()


def test_fp32_export_from_a_small_folder_keeps_no_guard_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = write_class_folders(tmp_path / "photos", n=5)  # 10 images, --calib-count 300
    code, _, err = cli("export", "mobilenetv3_small_100", "--weights", "none", "--precision", "fp32",
                       "--calib", str(photos), "--image-size", "64", "-o", str(tmp_path / "m.edgetl"),
                       capsys=capsys)  # fmt: skip
    assert code == 0, err


def test_fp16_knobs_on_the_cli_and_what_passed_is_not_lost_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgetl_runtime.bundle.reader import Bundle

    base = ["export", "mobilenetv3_small_100", "--weights", "none", "--precision", "fp32,fp16", "--image-size", "64",
            "--fp16-min-cosine", "1.0", "--fp16-keep-ops", "Conv"]  # fmt: skip
    out = tmp_path / "m.edgetl"
    code, _, err = cli(*base, "-o", str(out), capsys=capsys)
    assert code == 2 and not out.exists()
    error = [line for line in err.splitlines() if "error" in line]
    assert len(error) == 1 and "--precision fp32" in error[0] and "--skip-failed" in error[0]
    code, _, err = cli(*base, "--skip-failed", "-o", str(out), capsys=capsys)
    assert code == 0, err
    assert [p.value for p in Bundle.open(out).manifest.precisions] == ["fp32"]
    code, _, err = cli(*base[:-4], "--fp16-keep-ops", "Conv", "-o", str(out), capsys=capsys)
    assert code == 0, err
    fp16 = Bundle.open(out).manifest.validation["backbone.fp16.onnx"]
    assert "Conv" in fp16["arguments"]["op_block_list"]


# ------------------------------------------------------------------ item 9: progress off a terminal


def test_progress_lines_when_not_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys
) -> None:
    import logging

    from edgetl.finetune import trainer

    monkeypatch.setattr(trainer, "PROGRESS_EVERY_S", 0.0)  # every batch: the test needs no 20 s wait
    caplog.set_level(logging.INFO, logger="edgetl.finetune")
    photos = write_class_folders(tmp_path / "photos", n=6)
    code, _, err = cli("finetune", "mobilenetv3_small_100", "--weights", "none", "--data", str(photos),
                       "--strategy", "partial", "--freeze-stages", "2", "--epochs", "1", "--batch-size", "2",
                       "--image-size", "64", "-o", str(tmp_path / "run"), capsys=capsys)  # fmt: skip
    assert code == 0, err
    lines = [r.getMessage() for r in caplog.records if "batches (" in r.getMessage()]
    assert lines and all("ETA" in line and "elapsed" in line for line in lines)
    assert lines[0].startswith("epoch 1/1: 1/")
