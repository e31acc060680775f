"""Split a timm backbone into ordered stages, freeze some of them, and keep frozen BatchNorm frozen.

Stages come from timm's own ``group_matcher(coarse=True)`` (stem, one group per block stage, head
convs merged into the last), so every timm family works without a per-architecture table.

BatchNorm is frozen by pinning the module in eval mode, not by ``requires_grad=False`` or
``track_running_stats=False``: in train mode BN normalises with *batch* statistics and updates its
running averages even when its affine parameters are frozen (DESIGN §5).
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, cast

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from edgetl.finetune.config import FinetuneConfig, Strategy
from edgetl_runtime.errors import ConfigError


@dataclass(frozen=True)
class Stage:
    """One depth level of a backbone: its parameter names and the modules that own them."""

    index: int
    param_names: tuple[str, ...]
    module_names: tuple[str, ...]


def split_stages(model: nn.Module) -> list[Stage]:
    """Ordered stages (stem first) covering every parameter of ``model`` exactly once."""
    params = dict(model.named_parameters())
    if hasattr(model, "group_matcher"):
        from timm.models import group_modules, group_parameters

        matcher = cast(Any, model).group_matcher(coarse=True)  # timm's models define it; nn.Module does not
        param_stage: dict[str, int] = group_parameters(model, matcher, reverse=True)
        module_stage: dict[str, int] = group_modules(model, matcher, reverse=True)
    else:  # plain nn.Module: one stage per top-level child that holds parameters
        children = [n for n, c in model.named_children() if any(True for _ in c.parameters())]
        order = {n: i for i, n in enumerate(children)}
        param_stage = {p: order[p.split(".")[0]] for p in params}
        module_stage = {m: order[m.split(".")[0]] for m, _ in model.named_modules() if m}
    ids = sorted(set(param_stage.values()))
    renumber = {old: new for new, old in enumerate(ids)}  # dense 0..n-1
    return [
        Stage(
            index=renumber[sid],
            param_names=tuple(p for p in params if param_stage[p] == sid),
            module_names=tuple(m for m, s in module_stage.items() if s == sid),
        )
        for sid in ids
    ]


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def freeze_batchnorm(module: nn.Module) -> None:
    """Pin every BatchNorm inside ``module`` to eval mode, whatever ``.train()`` is called later."""
    for m in module.modules():
        if isinstance(m, _BatchNorm):
            m.train = types.MethodType(_stay_in_eval, m)  # type: ignore[method-assign]
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


def unfreeze_batchnorm(module: nn.Module, training: bool) -> None:
    """Undo :func:`freeze_batchnorm`; ``training`` is the mode the module should be in now."""
    for m in module.modules():
        if isinstance(m, _BatchNorm) and "train" in m.__dict__:
            del m.train
            m.train(training)


class FreezePlan:
    """Which stages of a backbone train at each epoch, for every strategy.

    ``apply(epoch)`` sets ``requires_grad`` and BatchNorm modes and returns whether the trainable set
    changed (a DDP wrapper must then be rebuilt, since DDP fixes its gradient buckets at wrap time).
    """

    def __init__(self, backbone: nn.Module, config: FinetuneConfig) -> None:
        self.backbone = backbone
        self.config = config
        self.stages = split_stages(backbone)
        n = len(self.stages)
        if config.freeze_stages > n:
            raise ConfigError(
                f"freeze_stages={config.freeze_stages} but this backbone has only {n} stages "
                f"(stem + blocks); use 0..{n}."
            )
        self._frozen: frozenset[int] | None = None

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def frozen_at(self, epoch: int) -> frozenset[int]:
        """Stage indices frozen during ``epoch`` (0-based)."""
        n, cfg = self.num_stages, self.config
        if cfg.strategy is Strategy.LINEAR_PROBE:
            return frozenset(range(n))
        if cfg.strategy is Strategy.FULL:
            return frozenset()
        if cfg.strategy is Strategy.PARTIAL:
            return frozenset(range(cfg.freeze_stages))
        unfrozen = min(n - cfg.freeze_stages, epoch // cfg.unfreeze_every)  # gradual: head alone first
        return frozenset(range(n - unfrozen))

    def apply(self, epoch: int) -> bool:
        """Freeze/unfreeze for ``epoch``; True when the set of trainable stages changed."""
        frozen = self.frozen_at(epoch)
        if frozen == self._frozen:
            return False
        modules = dict(self.backbone.named_modules())
        params = dict(self.backbone.named_parameters())
        training = self.backbone.training
        for stage in self.stages:
            is_frozen = stage.index in frozen
            for name in stage.param_names:
                params[name].requires_grad_(not is_frozen)
            for name in stage.module_names:
                if is_frozen or self.config.freeze_bn:
                    freeze_batchnorm(modules[name])
                else:
                    unfreeze_batchnorm(modules[name], training)
        self._frozen = frozen
        return True

    def release(self) -> None:
        """Make every parameter trainable and BatchNorm follow ``.train()`` again (the model leaves our hands)."""
        unfreeze_batchnorm(self.backbone, self.backbone.training)
        for p in self.backbone.parameters():
            p.requires_grad_(True)
        self._frozen = None
