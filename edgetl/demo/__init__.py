"""``edgetl demo``: the whole product on real data, offline, in minutes."""

from edgetl.demo.config import DemoConfig
from edgetl.demo.pipeline import run_demo

__all__ = ["DemoConfig", "run_demo"]
