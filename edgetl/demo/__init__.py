"""``edgetl demo``: the whole product on real data, offline, in minutes."""

from edgetl.demo.pipeline import DemoConfig, run_demo

__all__ = ["DemoConfig", "run_demo"]
