"""A backbone graph is checked against its manifest: every input/output mismatch is listed at load, outputs
are checked again at run time, and a graph that only works for the golden's batch size is a BackendError."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgetl_runtime.bundle.graph_check import check_features, io_problems
from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.errors import BackendError

from . import _hostile as H
from ._support import RED, load_learner

pytestmark = pytest.mark.runtime


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
        with load_learner(bad) as learner:  # the batch-1 timing of precision="best" may already meet it
            learner.features(RED[:1])
    static = H.resign(reliability_bundle, tmp_path / "s.edgetl", backbone__fp32__onnx=H.onnx_model(tail="reshape3"))
    with pytest.raises(BackendError, match="fixed batch axis 3"):  # the visible variant is refused at load
        load_learner(static)
