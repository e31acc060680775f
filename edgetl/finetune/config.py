"""Fine-tuning configuration: one frozen dataclass, validated once, serialised into every checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from edgetl_runtime.arguments import to_enum
from edgetl_runtime.errors import ConfigError, raise_all


class Strategy(str, Enum):
    """Which weights train: the head on cached features, the deeper stages, everything, or a growing set."""

    LINEAR_PROBE = "linear-probe"
    PARTIAL = "partial"
    FULL = "full"
    GRADUAL = "gradual"


class OptimizerName(str, Enum):
    ADAMW = "adamw"
    SGD = "sgd"


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune a backbone.

    ``batch_size`` is per process (under torchrun the global batch is ``batch_size * world_size``).
    ``freeze_stages`` freezes the first N stages (stem first) for ``partial``, and is a floor that
    ``gradual`` never unfreezes. ``layer_decay`` < 1 scales the LR of stage i by
    ``layer_decay ** (n_stages - i)``, so early generic features move least.
    """

    strategy: Strategy = Strategy.FULL
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 32
    optimizer: OptimizerName = OptimizerName.ADAMW
    momentum: float = 0.9
    weight_decay: float = 0.05
    layer_decay: float = 1.0
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    patience: int | None = 5
    freeze_stages: int = 0
    unfreeze_every: int = 1
    freeze_bn: bool = False
    augment: bool = True
    val_fraction: float = 0.1
    seed: int = 0
    workers: int = 0
    device: str | None = None
    feature_cache_dir: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategy", to_enum(Strategy, self.strategy, "strategy"))
        object.__setattr__(self, "optimizer", to_enum(OptimizerName, self.optimizer, "optimizer"))
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (0 < self.layer_decay <= 1, f"layer_decay must lie in (0, 1], got {self.layer_decay}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must lie in [0, 1), got {self.label_smoothing}"),
            (self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}"),
            (0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}"),
            (self.patience is None or self.patience >= 1, f"patience must be >= 1 or None, got {self.patience}"),
            (self.freeze_stages >= 0, f"freeze_stages must be >= 0, got {self.freeze_stages}"),
            (self.unfreeze_every >= 1, f"unfreeze_every must be >= 1, got {self.unfreeze_every}"),
            (0 <= self.val_fraction < 1, f"val_fraction must lie in [0, 1), got {self.val_fraction}"),
            (self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (0 <= self.momentum < 1, f"momentum must lie in [0, 1), got {self.momentum}"),
        ]  # fmt: skip
        problems = [msg for ok, msg in checks if not ok]
        if self.strategy is Strategy.PARTIAL and self.freeze_stages == 0:
            problems.append("strategy 'partial' needs freeze_stages >= 1 (otherwise it is 'full')")
        raise_all(ConfigError, problems, "Invalid FinetuneConfig")

    # ------------------------------------------------------------------ presets

    @classmethod
    def linear_probe(cls, **overrides: Any) -> FinetuneConfig:
        """Head only, on features computed once: seconds on a CPU, the safe few-shot default."""
        base = dict(strategy=Strategy.LINEAR_PROBE, epochs=30, lr=3e-3, batch_size=64, weight_decay=1e-4,
                    warmup_epochs=0.0, patience=8)  # fmt: skip
        return cls(**{**base, **overrides})

    @classmethod
    def partial(cls, freeze_stages: int = 4, **overrides: Any) -> FinetuneConfig:
        """Freeze the stem and early stages (generic edges/textures), adapt the rest."""
        base = dict(strategy=Strategy.PARTIAL, freeze_stages=freeze_stages, epochs=8, lr=1e-3, layer_decay=0.8)
        return cls(**{**base, **overrides})

    @classmethod
    def full(cls, **overrides: Any) -> FinetuneConfig:
        """Everything trains, with layer-wise LR decay to protect early features."""
        base = dict(strategy=Strategy.FULL, epochs=8, lr=1e-3, layer_decay=0.75)
        return cls(**{**base, **overrides})

    @classmethod
    def gradual(cls, unfreeze_every: int = 1, **overrides: Any) -> FinetuneConfig:
        """ULMFiT-style: head first, then one more stage (deepest first) every ``unfreeze_every`` epochs."""
        base = dict(strategy=Strategy.GRADUAL, unfreeze_every=unfreeze_every, epochs=10, lr=1e-3, layer_decay=0.8)
        return cls(**{**base, **overrides})

    def replace(self, **changes: Any) -> FinetuneConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["strategy"] = self.strategy.value
        d["optimizer"] = self.optimizer.value
        return d
