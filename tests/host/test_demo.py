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
    for name, info in saved["exports"].items():  # int8 is either shipped or refused with the guard's reason
        assert ("int8" in info["precisions"]) != ("int8_refused" in info), name
    assert all(c["backbone_runs"] == 0 for c in saved["few_shot"])  # episodes only ever hit the cache
    assert all(0.0 <= c["accuracy_mean"] <= 1.0 for c in saved["few_shot"])
    report = (tmp_path / "report.md").read_text()
    assert "Few-shot accuracy on unseen target classes" in report and (tmp_path / "few_shot.png").stat().st_size > 0
    assert (tmp_path / "imagenet.edgetl").is_file() and (tmp_path / "finetuned.edgetl").is_file()
    assert result.latency["cells"], "the latency step measured nothing"
