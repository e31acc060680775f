"""Optimizer and schedule: layer-wise LR decay over stages, no decay on norms/biases, warm-up + cosine."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from edgetl.finetune.config import FinetuneConfig, OptimizerName
from edgetl.finetune.stages import Stage


def layer_scales(num_stages: int, layer_decay: float) -> list[float]:
    """LR multiplier of stages 0..n-1 then the head (index n): ``decay ** (n - i)``, head = 1."""
    return [layer_decay ** (num_stages - i) for i in range(num_stages + 1)]


def _groups(params: list[nn.Parameter], config: FinetuneConfig, scale: float, stage: int) -> list[dict[str, Any]]:
    # 1-D tensors are norm scales/shifts and biases: decaying them only hurts (timm's convention).
    split = ([p for p in params if p.ndim > 1], config.weight_decay), ([p for p in params if p.ndim <= 1], 0.0)
    return [
        {"params": plist, "weight_decay": wd, "lr": config.lr * scale, "lr_scale": scale, "stage": stage}
        for plist, wd in split
        if plist
    ]


def head_groups(head: nn.Module, config: FinetuneConfig) -> list[dict[str, Any]]:
    """Groups for a head trained alone (linear probe)."""
    return _groups(list(head.parameters()), config, 1.0, 0)


def param_groups(
    backbone: nn.Module, head: nn.Module, stages: Sequence[Stage], config: FinetuneConfig
) -> list[dict[str, Any]]:
    """One group per (stage, decay/no-decay), the head last with LR scale 1.

    Frozen parameters are included so that a later unfreeze (gradual strategy) needs no new optimizer;
    torch optimizers skip parameters whose grad is None.
    """
    scales = layer_scales(len(stages), config.layer_decay)
    named = dict(backbone.named_parameters())
    buckets = [[named[n] for n in stage.param_names] for stage in stages] + [list(head.parameters())]
    return [g for i, params in enumerate(buckets) for g in _groups(params, config, scales[i], i)]


def build_optimizer(groups: list[dict[str, Any]], config: FinetuneConfig) -> torch.optim.Optimizer:
    if config.optimizer is OptimizerName.SGD:
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """LR factor: linear ramp to 1 over ``warmup_steps``, then cosine down to ``min_ratio`` at the end."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: FinetuneConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule; warm-up is clamped so a 1-epoch run still reaches the peak LR."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, total, config.min_lr_ratio)
    )
