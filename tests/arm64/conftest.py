"""Device-runtime tests for ARM64, run *inside* the emulated ARM64 Python by ``make test-arm64``.

``scripts/test-arm64.sh`` exports the bundles on the x86 host (``scripts/arm64_bundles.py``), installs
``edgetl-runtime`` from this repository into the emulated environment (``scripts/arm64-env.sh``) and
runs ``pytest tests/arm64`` there with ``EDGETL_ARM64_BUNDLES`` naming the bundle folder. That
environment has numpy, onnxruntime, Pillow and pytest only: no torch, timm or onnx, as on a device.

Without ``EDGETL_ARM64_BUNDLES`` (the host's ``make test``) nothing here is collected.
``scripts/test-arm64.sh --native`` runs the same tests with the host's Python, to tell an ARM-only
failure from a general one.
"""

from __future__ import annotations

import os

if not os.environ.get("EDGETL_ARM64_BUNDLES"):
    collect_ignore_glob = ["test_*.py"]
