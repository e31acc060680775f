"""The host CLI's words, the parts that need no model: wording, help, fine-tuning bookkeeping, README."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.host

ROOT = Path(__file__).resolve().parents[2]


def test_one_sign_for_accuracy_drops_and_measured_values_apart_from_thresholds() -> None:
    from edgetl.commands.export import _guard_line, _summary

    check = {"accuracy_fp32": 80.0, "accuracy_int8": 79.96, "accuracy_delta": -0.04, "eval_count": 500}
    guard = {"drop": 0.04, "interval": [-0.2, 0.3], "passed": True, "max_drop": 1.0, "kind": "paired", "images": 500}
    assert "drop +0.04 points" in _summary(check) and "drop +0.04 points" in _guard_line(guard)
    fp16 = _summary({"min_cosine": 0.995, "cosine_min": 0.9999, "cosine_mean": 0.99995})
    assert "cosine min 0.99990 (threshold >= 0.99500)" in fp16 and "min_cosine" not in fp16


def test_help_shows_each_default_once_none_on_required_options_and_no_markup() -> None:
    from edgetl.cli import build_parser

    parser = build_parser()
    texts = [parser.format_help()]
    for sub in parser._subparsers._group_actions[0].choices.values():  # type: ignore[union-attr]
        texts.append(sub.format_help())
        for action in sub._actions:
            if isinstance(action, type(parser._subparsers._group_actions[0])):  # type: ignore[union-attr]
                texts += [s.format_help() for s in action.choices.values()]
    text = "\n".join(texts)
    assert "(default: None)" not in text and "(default: False)" not in text and "``" not in text
    assert not re.search(r"default[^()]*\)\s*\(default:", text.replace("\n", " "))
    assert "(default: linear-probe)" in text


def test_best_epoch_is_counted_from_one_and_ties_go_to_the_lower_loss() -> None:
    from edgetl.finetune.metrics import FinetuneResult
    from edgetl.finetune.trainer import EarlyStopping

    stopper = EarlyStopping(patience=2)
    assert [stopper.step(a, loss)[0] for a, loss in ((0.5, 1.0), (0.5, 0.8), (0.5, 0.8), (0.4, 0.1))] == [
        True, True, False, False]  # fmt: skip
    result = FinetuneResult(strategy="linear-probe", classes=["a", "b"], best_epoch=2)
    assert result.to_dict()["best_epoch"] == 3  # the log's "epoch 3/N" and the CLI's "(best 3)"


def test_a_class_of_one_image_warns() -> None:
    from edgetl.datasets import from_arrays
    from edgetl.finetune.api import validate_inputs

    data = from_arrays(np.zeros((5, 8, 8), np.uint8), [0, 0, 0, 0, 1], ["many", "lonely"])
    with pytest.warns(UserWarning, match=r"\['lonely'\] have 1 training image"):
        validate_inputs(data, None, None)


def test_readme_names_the_real_reject_attribute_and_the_measured_arm64_time() -> None:
    from edgetl_runtime.heads.base import BaseHead

    readme = (ROOT / "README.md").read_text()
    assert "learner.head.reject_threshold_" in readme and hasattr(BaseHead, "reject_threshold_")
    assert not re.search(r"(?<!head\.)\breject_threshold_", readme.replace("learner.head.reject_threshold_", ""))
    assert "1 min warm" not in readme and "4 min 42 s" in readme
