"""``finetune()``: one call from a backbone and labelled images to a checkpoint and a result.

Reads as a list of steps: validate inputs, split validation, join the process group, run the
strategy, evaluate on test, write checkpoint + metrics from rank 0 only.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgetl.backbones import Backbone
from edgetl.datasets import ImageDataset, stratified_split
from edgetl.finetune import checkpoint as ckpt
from edgetl.finetune import distributed as D
from edgetl.finetune.config import FinetuneConfig, Strategy
from edgetl.finetune.data import TorchImageDataset, eval_loader, train_loader
from edgetl.finetune.linear_probe import run_linear_probe
from edgetl.finetune.metrics import FinetuneResult, History, best_epoch_number
from edgetl.finetune.optim import build_optimizer, build_scheduler, param_groups
from edgetl.finetune.stages import FreezePlan
from edgetl.finetune.trainer import Evaluation, evaluate, fit
from edgetl_runtime.errors import DatasetError, raise_all

log = logging.getLogger("edgetl.finetune")


class Classifier(nn.Module):
    """Backbone + linear head; attribute names give the checkpoint's ``backbone.*`` / ``head.*`` keys."""

    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.backbone(x))  # (N, C)
        return logits


@dataclass
class _Outcome:
    history: History
    test: Evaluation | None
    feature_seconds: float | None = None


def finetune(
    backbone: Backbone, train: ImageDataset, val: ImageDataset | None, test: ImageDataset | None,
    config: FinetuneConfig, output_dir: Path | str, *, provenance: dict[str, Any] | None = None,
) -> FinetuneResult:  # fmt: skip
    """Fine-tune ``backbone`` on ``train`` and write the best-validation model to ``output_dir``.

    ``provenance`` (e.g. ``{"data": {"source": ..., "classes": ...}, "command": {...}}``) is stored in the
    run's ``edgetl_config.json``: ``edgetl export`` calibrates on the recorded data, ``--config`` replays it.

    The backbone's model is trained in place; on return ``backbone.head`` and ``backbone.classes``
    hold the classifier, as :func:`edgetl.create_backbone(output_dir)` would rebuild it. Without
    ``val``, ``config.val_fraction`` of ``train`` is held out (stratified) for early stopping.
    Under ``torchrun`` every rank calls this; data-parallel training is set up here.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    validate_inputs(train, val, test)
    train, val = _hold_out_val(train, val, config)
    output_dir = Path(output_dir)
    with D.distributed_context(config.device) as ctx:
        _seed_everything(config.seed)
        head = nn.Linear(backbone.feature_dim, len(train.classes))
        backbone.model.to(ctx.device)
        head.to(ctx.device)
        D.broadcast_state(backbone.model, ctx)  # ranks may have built different random inits
        D.broadcast_state(head, ctx)

        def on_best(epoch: int, history: History) -> None:
            if ctx.is_main:  # only rank 0 touches the disk
                metrics = {"best_epoch": best_epoch_number(epoch), "val_accuracy": history.val_acc[epoch]}
                ckpt.save_checkpoint(output_dir, backbone, head, train.classes, config, metrics, provenance)

        if config.strategy is Strategy.LINEAR_PROBE:
            probe = run_linear_probe(backbone, head, {"train": train, "val": val, "test": test}, config, ctx, on_best)
            outcome = _Outcome(probe.history, probe.test, probe.feature_seconds)
        else:
            outcome = _train_network(backbone, head, train, val, test, config, ctx, on_best)
        result = _result(outcome, train, config, ctx.world_size, output_dir, time.perf_counter() - start)
        result.cpu_time_s = time.process_time() - cpu_start
        backbone.model.eval()
        backbone.head, backbone.classes = head.eval(), list(train.classes)
        if ctx.is_main:
            ckpt.save_checkpoint(output_dir, backbone, head, train.classes, config, _summary(result), provenance)
            result.save(output_dir)
        D.barrier(ctx)
    return result


def validate_inputs(train: ImageDataset, val: ImageDataset | None, test: ImageDataset | None) -> None:
    """Refuse empty or single-class training data and splits whose classes disagree (all problems at once)."""
    train.require_trainable("fine-tuning (train split)")
    counts = train.class_counts()
    single = [train.classes[c] for c, n in enumerate(counts) if n == 1]
    if single:
        warnings.warn(
            f"class(es) {single[:5]} have 1 training image: one example cannot teach a class, and accuracy measured on "
            "so few images means little. Fix: give each class 5 or more images.",
            stacklevel=3,
        )
    problems = []
    for name, split in (("val", val), ("test", test)):
        if split is None:
            continue
        if len(split) == 0:
            problems.append(f"the {name} split is empty; pass None to skip it or give it images")
        if list(split.classes) != list(train.classes):
            problems.append(f"the {name} split has classes {split.classes}, train has {train.classes}")
    raise_all(DatasetError, problems, "Fine-tuning data is inconsistent")


def _hold_out_val(
    train: ImageDataset, val: ImageDataset | None, config: FinetuneConfig
) -> tuple[ImageDataset, ImageDataset | None]:
    if val is not None or config.val_fraction == 0:
        return train, val
    held, rest = stratified_split(train, [config.val_fraction, 1 - config.val_fraction], seed=config.seed)
    if len(held) == 0:
        return train, None  # too few images to hold any out: train on all, keep the last epoch
    rest.require_trainable(f"fine-tuning after holding out val_fraction={config.val_fraction}")
    return rest, held


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeds third-party code that uses the global RNG
    torch.manual_seed(seed)


def _train_network(
    backbone: Backbone, head: nn.Linear, train: ImageDataset, val: ImageDataset | None, test: ImageDataset | None,
    config: FinetuneConfig, ctx: D.DistContext, on_best: Callable[[int, History], None],
) -> _Outcome:  # fmt: skip
    """partial / full / gradual: the backbone runs every step, stages freeze per the plan."""
    net = Classifier(backbone.model, head).to(ctx.device)
    plan = FreezePlan(backbone.model, config)
    plan.apply(0)
    spec, bs, workers = backbone.spec, config.batch_size, config.workers
    train_dl = train_loader(TorchImageDataset(train, spec, config.augment), bs, ctx, config.seed, workers)
    val_dl = eval_loader(TorchImageDataset(val, spec, False), 2 * bs, ctx, workers) if val is not None else None
    optimizer = build_optimizer(param_groups(backbone.model, head, plan.stages, config), config)
    scheduler = build_scheduler(optimizer, config, len(train_dl))
    n = len(train.classes)
    try:
        history = fit(net, train_dl, val_dl, n, optimizer, scheduler, config, ctx, on_epoch=plan.apply,
                      on_best=on_best)  # fmt: skip
    finally:
        plan.release()
    test_eval = None
    if test is not None:
        test_eval = evaluate(net, eval_loader(TorchImageDataset(test, spec, False), 2 * bs, ctx, workers), n, ctx)
    return _Outcome(history, test_eval)


def _result(
    outcome: _Outcome, train: ImageDataset, config: FinetuneConfig, world_size: int, output_dir: Path, wall: float
) -> FinetuneResult:
    h = outcome.history
    return FinetuneResult(
        **{f.name: getattr(h, f.name) for f in dataclasses.fields(History)},
        strategy=config.strategy.value,
        classes=list(train.classes),
        val_accuracy=h.val_acc[h.best_epoch] if h.val_acc else None,
        test_accuracy=outcome.test.accuracy if outcome.test else None,
        test_loss=outcome.test.loss if outcome.test else None,
        confusion=outcome.test.confusion if outcome.test else None,
        confusion_split="test" if outcome.test else None,
        wall_time_s=wall,
        feature_seconds=outcome.feature_seconds,
        train_size=len(train),
        world_size=world_size,
        output_dir=str(output_dir),
    )


def _summary(result: FinetuneResult) -> dict[str, object]:
    keys = ("best_epoch", "val_accuracy", "test_accuracy", "test_loss", "wall_time_s", "cpu_time_s", "train_size",
            "world_size")  # fmt: skip
    return {k: getattr(result, k) for k in keys} | {
        "epochs_run": result.epochs_run,
        "best_epoch": best_epoch_number(result.best_epoch),
    }
