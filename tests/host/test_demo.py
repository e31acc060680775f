"""The demo pipeline end to end at toy size: every step runs and the report holds what it promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgetl.demo import DemoConfig, run_demo

pytestmark = [pytest.mark.host, pytest.mark.slow]


def test_demo_runs_end_to_end_at_toy_size(tmp_path: Path) -> None:
    config = DemoConfig(
        image_size=32,
        finetune_per_class=8,
        finetune_epochs=1,
        calibration_count=10,
        eval_count=40,  # the int8 guard scores a 5-shot probe: > 5 images per class
        shots=(1, 2),
        seeds=2,
        story_shots=2,
        pool_per_class=3,
        test_per_class=4,
        latency_runs=10,
        latency_max_seconds=0.2,
        latency_probe=False,
        output=tmp_path,
    )
    result = run_demo(config)
    saved = json.loads((tmp_path / "results.json").read_text())
    combos = {(c["bundle"], c["precision"]) for c in saved["few_shot"]}
    shipped = {(name, p) for name, info in saved["exports"].items() for p in info["precisions"]}
    assert combos == shipped and {("imagenet", "fp32"), ("finetuned", "fp32")} <= combos
    for name, info in saved["exports"].items():  # at this size the guard passes int8 for both backbones
        assert info["precisions"] == ["fp32", "int8"] and "int8_refused" not in info, name
    assert all(c["backbone_runs"] == 0 for c in saved["few_shot"])  # episodes only ever hit the cache
    chance = 1 / len(config.target_classes)  # 0.2; measured 0.55-0.78 on 20 test images
    assert all(c["accuracy_mean"] > chance + 0.15 for c in saved["few_shot"]), saved["few_shot"]
    report = (tmp_path / "report.md").read_text()
    assert "Few-shot accuracy on the new classes" in report and (tmp_path / "few_shot.png").stat().st_size > 0
    assert (tmp_path / "imagenet.edgetl").is_file() and (tmp_path / "finetuned.edgetl").is_file()
    assert result.latency["cells"], "the latency step measured nothing"
    # Issue 21: the whole story, right on its face.
    story = saved["story"]
    assert story["out_of_box"]["classes"] == 5 and story["out_of_box"]["accuracy"] > 0.4  # shipped head, no enrolment
    assert story["extended_all"]["classes"] == story["merged_all"]["classes"] == 10
    assert story["extended_old"]["accuracy"] > 0.4 and story["merged_all"]["accuracy"] > 0.3
    assert saved["exports"]["finetuned"]["head"]["labels"] and not saved["exports"]["imagenet"]["head"]
    for text in ("out of the box", "all classes", "merged.edgetl", "Latency of `finetuned.edgetl`", "drop "):
        assert text in report, text
    assert "{" not in report and "accuracy_delta" not in report and "min_cosine" not in report  # no raw dicts
    assert (tmp_path / "story.png").stat().st_size > 0


def test_a_refused_int8_ships_fp32_alone_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgetl.demo import pipeline
    from edgetl_runtime.errors import QuantizationError

    def export_with(
        config: DemoConfig, model: object, calib: object, path: Path, precisions: tuple[str, ...], head: object = None
    ) -> tuple:
        if "int8" in precisions:
            raise QuantizationError("int8 stayed significantly beyond max_drop")
        return path, {"path": str(path), "precisions": list(precisions)}

    monkeypatch.setattr(pipeline, "_export_with", export_with)
    path, info = pipeline._export(DemoConfig(output=tmp_path), "m", None, tmp_path / "m.edgetl")  # type: ignore[arg-type]
    assert path == tmp_path / "m.edgetl" and info["precisions"] == ["fp32"] and "max_drop" in info["int8_refused"]
