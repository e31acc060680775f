"""The shared toolbox: row cosine, K-shot episodes, the device's probe, enum/precision parsing, CLI options."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from edgetl_runtime.arguments import to_enum, to_precisions
from edgetl_runtime.bundle.manifest import Precision
from edgetl_runtime.cli_args import PRECISION_CHOICES, comma_list, thread_count
from edgetl_runtime.errors import ConfigError, InputError
from edgetl_runtime.fewshot import episode, probe_accuracy, support_indices, support_masks
from edgetl_runtime.numerics import row_cosine

pytestmark = pytest.mark.runtime


def test_row_cosine_agrees_with_the_definition_and_never_passes_nan() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    expected = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    np.testing.assert_allclose(row_cosine(a, b), expected, rtol=1e-12)
    np.testing.assert_allclose(row_cosine(a, 3 * a), 1.0)
    zero, nan = np.zeros((1, 7)), np.full((1, 7), np.nan)
    assert row_cosine(zero, zero)[0] == 1.0 and row_cosine(zero, a[:1])[0] == 0.0 and row_cosine(nan, nan)[0] == 0.0
    with pytest.raises(InputError, match="one shape"):
        row_cosine(a, b[:, :3])


def test_episodes_draw_shots_per_class_and_are_reproducible() -> None:
    labels = np.repeat(np.arange(4), 10)[::-1].copy()
    picked = support_indices(labels, 3, np.random.default_rng(1))
    assert np.bincount(labels[picked]).tolist() == [3, 3, 3, 3] and len(set(picked.tolist())) == 12
    assert (episode(labels, 2, seed=3) == episode(labels, 2, seed=3)).all()
    assert not (episode(labels, 2, seed=3) == episode(labels, 2, seed=4)).all()
    masks = support_masks(labels, 2, 3, seed=0)
    assert [int(m.sum()) for m in masks] == [8, 8, 8] and not (masks[0] == masks[1]).all()


def test_the_probe_scores_separable_features_perfectly_and_noise_near_chance() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    centres = 10 * np.eye(3, 16)
    clean = (centres[labels] + 0.01 * rng.normal(size=(60, 16))).astype(np.float32)
    masks = support_masks(labels, 2, 2)
    assert probe_accuracy(clean, labels, masks, head="ncm") == 100.0
    noise = rng.normal(size=(60, 16)).astype(np.float32)
    assert probe_accuracy(noise, labels, masks, head="ncm") < 70.0


def test_enum_and_precision_parsing() -> None:
    assert to_enum(Precision, "INT8", "precision") is Precision.INT8
    with pytest.raises(ConfigError, match=r"Unknown precision 'int4'; choose one of \['fp32', 'fp16', 'int8'\]"):
        to_enum(Precision, "int4", "precision")
    problems: list[str] = []
    assert to_enum(Precision, "int4", "precision", problems) == "int4" and problems == [
        "Unknown precision 'int4'; choose one of ['fp32', 'fp16', 'int8']"
    ]
    assert to_precisions("fp32, int8,fp32") == (Precision.FP32, Precision.INT8)
    assert to_precisions([Precision.FP16, "fp32"]) == (Precision.FP16, Precision.FP32)
    with pytest.raises(ConfigError, match=r"Unknown precision\(s\) \['int4', 'x'\]"):
        to_precisions("fp32,int4,x")


def test_shared_cli_options() -> None:
    assert PRECISION_CHOICES == ("best", "int8", "fp16", "fp32")
    parse = comma_list(int)
    assert parse("1, 8,32") == (1, 8, 32)
    for bad in ("", "1,x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="of a, b"):
        comma_list(str, ["a", "b"])("a,c")
    assert thread_count("4") == 4
    for bad in ("0", "-1", "1025", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            thread_count(bad)


def test_the_public_face_is_light_and_complete() -> None:
    import subprocess
    import sys

    code = (
        "import sys, edgetl_runtime as r\n"
        "heavy = [m for m in ('onnxruntime', 'sqlite3', 'torch', 'onnx') if m in sys.modules]\n"
        "from edgetl_runtime import Bundle, Learner, create_backend, create_head\n"
        "assert Learner.__name__ == 'Learner' and Bundle.__name__ == 'Bundle' and callable(create_backend)\n"
        "print(heavy, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["[]", "False"], done.stdout + done.stderr
