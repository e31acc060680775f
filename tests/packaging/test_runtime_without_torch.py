"""edgetl-runtime installs into a fresh venv without torch and runs a full cycle on a real bundle."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.runtime, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]

DEVICE_SCRIPT = textwrap.dedent(
    """
    import importlib.util, sys
    import numpy as np
    from edgetl_runtime.learner import Learner
    assert importlib.util.find_spec("torch") is None, "torch must not be installed here"
    bundle, images, labels = sys.argv[1], np.load(sys.argv[2]), np.load(sys.argv[3])
    learner = Learner.load(bundle, sys.argv[4], backend="onnxruntime", precision="fp32")
    learner.add(list(images[:10]), [str(v) for v in labels[:10]])
    learner.fit()
    predicted = learner.predict(list(images[10:]))
    assert len(predicted) == len(images) - 10
    assert set(predicted) <= {str(v) for v in labels[:10]}
    assert not {"torch", "timm", "onnx"} & set(sys.modules), sorted(m for m in sys.modules if "torch" in m)
    print("OK", learner.info()["samples"], learner.backend.name)
    """
)


def test_fresh_venv_without_torch_runs_the_learner(tmp_path: Path) -> None:
    import numpy as np

    from edgetl.datasets import k_shot, load_fashion_mnist
    from edgetl.export import BundleConfig, export_bundle

    bundle = tmp_path / "tiny.edgetl"
    export_bundle(
        "tf_efficientnet_lite0",
        bundle,
        weights="bundled",
        image_size=32,
        config=BundleConfig(precisions=("fp32",), calibration_count=8, eval_count=8),
    )
    data = load_fashion_mnist("test").select_classes([0, 1])
    support, rest = k_shot(data, 5, seed=0)
    images = np.concatenate([np.stack(support.images), np.stack(rest.images[:6])])
    labels = np.concatenate([support.labels, rest.labels[:6]])
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "labels.npy", labels)

    source = tmp_path / "runtime-src"  # build from a copy: setuptools leaves build/ beside the sources
    shutil.copytree(REPO / "runtime", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", f"{source}[cpu]"], check=False, capture_output=True, text=True
    )
    if install.returncode != 0 and "No matching distribution" in install.stderr + install.stdout:
        pytest.skip(f"no package index reachable to install onnxruntime: {install.stderr[-300:]}")
    assert install.returncode == 0, install.stderr[-2000:]
    script = tmp_path / "device.py"
    script.write_text(DEVICE_SCRIPT)
    run = subprocess.run(
        [
            str(py),
            str(script),
            str(bundle),
            str(tmp_path / "images.npy"),
            str(tmp_path / "labels.npy"),
            str(tmp_path / "state.sqlite"),
        ],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("OK 10 onnxruntime")
