"""A user's own photos, end to end with default flags and no Fashion-MNIST (issue 16).

Three classes of real pictures (crops of skimage's sample photos: a cat, a coffee cup, a rocket),
14 images each, PNG and JPEG, mixed sizes, go through ``edgetl finetune`` -> ``edgetl export``
(fp32, int8, fp16; calibrated on the run's own data, no ``--calib``) -> ``edgetl-device add / fit /
predict``. Only the budget is small (64 px, 1 epoch); every other flag is the default.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from user_photos import photo_crops, write_class_folders

from edgetl.cli import main as edgetl
from edgetl_runtime.cli import main as device

pytestmark = [pytest.mark.host, pytest.mark.slow]

CLASSES = ("chelsea", "coffee", "rocket")


def _queries(folder: Path) -> Path:
    """Two unseen crops per class, and the moon (like nothing enrolled)."""
    import skimage.data
    from PIL import Image

    folder.mkdir()
    for name in CLASSES:
        for i, crop in enumerate(photo_crops(name, 2, seed=99)):
            Image.fromarray(crop).save(folder / f"{name}_{i}.jpg")
    Image.fromarray(skimage.data.moon()).save(folder / "moon.png")  # 512x512 grayscale
    return folder


def _run_device(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    code = device(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_own_photos_finetune_export_enrol_predict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "no-fmnist").mkdir()
    monkeypatch.setenv("EDGETL_FASHION_MNIST", str(tmp_path / "no-fmnist"))  # nothing may fall back on it
    photos = write_class_folders(tmp_path / "photos", n=14, classes=CLASSES)
    sizes = {Image_size(p) for p in photos.rglob("*.*")}
    assert len(sizes) > 10 and {p.suffix for p in photos.rglob("*.*")} == {".png", ".jpg"}
    queries = _queries(tmp_path / "queries")
    run, bundle = tmp_path / "run", tmp_path / "model.edgetl"

    assert edgetl(["finetune", "tf_efficientnet_lite0", "--data", str(photos), "--epochs", "1",
                   "--image-size", "64", "-o", str(run)]) == 0  # fmt: skip
    assert edgetl(["export", str(run), "--precision", "fp32,int8,fp16", "-o", str(bundle)]) == 0
    capsys.readouterr()
    from edgetl_runtime.bundle.reader import Bundle

    manifest = Bundle.open(bundle).manifest
    assert [p.value for p in manifest.precisions] == ["fp32", "int8", "fp16"]
    source = manifest.calibration["source"]
    assert source.startswith(f"{photos.name}/") and str(photos.parent) not in source  # a name, not the host's path

    base = ["--bundle", str(bundle)]
    for name in CLASSES:
        out = _run_device(capsys, *base, "add", str(photos / name), "--label", name)
        assert out["added"] == 14
    fit = _run_device(capsys, *base, "fit")
    assert fit["samples"] == 42 and fit["loo_accuracy"] >= 0.9 and fit["reject_threshold"] is not None
    plain = _run_device(capsys, *base, "predict", str(queries))["predictions"]
    known = [p for p in plain if "moon" not in p["file"]]
    assert sum(Path(p["file"]).stem.startswith(p["label"]) for p in known) >= 5  # of 6
    rejected = _run_device(capsys, *base, "predict", str(queries), "--reject")
    moon = next(p for p in rejected["predictions"] if "moon" in p["file"])
    assert moon["label"] == "unknown" and moon["similarity"] < rejected["reject_threshold"]

    # One class enrolled: the moon is still not a cat.
    one = [*base, "--state", str(tmp_path / "one.sqlite")]
    _run_device(capsys, *one, "add", str(photos / "chelsea"), "--label", "chelsea")
    alone = _run_device(capsys, *one, "predict", str(queries / "moon.png"), "--reject")
    assert alone["predictions"][0]["label"] == "unknown"


def Image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return tuple(np.asarray(im.size).tolist())  # type: ignore[return-value]
