"""The benchmark scripts import their siblings by bare name (``python benchmarks/x.py`` puts ``benchmarks/``
first on the path); the tests here do the same, so ``from targets.judge import ...`` means the same module."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = str(Path(__file__).resolve().parents[2] / "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)
