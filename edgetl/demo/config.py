"""What the demo runs (``DemoConfig``) and what it found (``DemoResult``), shared by the pipeline and the report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgetl.demo.device import FewShotCell
from edgetl.demo.story import StoryResult


@dataclass(frozen=True)
class DemoConfig:
    """Sized to finish in well under 10 minutes on 2 CPU cores; every number is a parameter."""

    backbone: str = "tf_efficientnet_lite0"
    weights: str = "bundled"
    image_size: int = 96  # a multiple of 32: TF-"same" padding exports exactly only there
    crop_pct: float = 1.0  # Fashion-MNIST objects fill the frame: a centre crop would cut them
    source_classes: tuple[int, ...] = (0, 1, 2, 3, 4)  # T-shirt, Trouser, Pullover, Dress, Coat
    target_classes: tuple[int, ...] = (5, 6, 7, 8, 9)  # Sandal, Shirt, Sneaker, Bag, Ankle boot: never seen on host
    finetune_per_class: int = 300
    finetune_epochs: int = 2
    finetune_lr: float = 3e-4  # gentle: adapt to the domain without collapsing onto the 5 source classes
    freeze_stages: int = 5
    calibration_count: int = 200
    eval_count: int = 300
    shots: tuple[int, ...] = (1, 5, 10)
    seeds: int = 5
    story_shots: int = 5  # K per new class on the simulated devices (extend and fleet merge)
    pool_per_class: int = 20
    test_per_class: int = 200
    threads: int = 2
    latency_runs: int = 100
    latency_max_seconds: float = 3.0  # per measured cell, after at least 10 runs
    latency_probe: bool = True  # cold start and peak RSS, each in a fresh process
    output: Path = field(default_factory=lambda: Path("runs/demo"))

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass
class DemoResult:
    config: DemoConfig
    timings_s: dict[str, float] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    exports: dict[str, Any] = field(default_factory=dict)
    few_shot: list[FewShotCell] = field(default_factory=list)
    latency: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)  # the CPU and what the runtime chose on it
    story: StoryResult | None = None  # out of the box, extended, merged

    def to_dict(self) -> dict[str, Any]:
        return {
            "story": None if self.story is None else self.story.to_dict(),
            "config": self.config.to_dict(),
            "timings_s": self.timings_s,
            "finetune": self.finetune,
            "exports": self.exports,
            "few_shot": [c.to_dict() for c in self.few_shot],
            "latency": self.latency,
            "machine": self.machine,
        }
