"""Host fine-tuning: linear probe, partial, full and gradual unfreezing, single process or torchrun DDP."""

from edgetl.finetune.api import finetune
from edgetl.finetune.config import FinetuneConfig, OptimizerName, Strategy
from edgetl.finetune.metrics import FinetuneResult

__all__ = ["FinetuneConfig", "FinetuneResult", "OptimizerName", "Strategy", "finetune"]
