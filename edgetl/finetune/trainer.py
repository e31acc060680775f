"""The training loop shared by every strategy: label smoothing, early stopping, best-state tracking."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from edgetl.finetune import distributed as D
from edgetl.finetune.config import FinetuneConfig
from edgetl.finetune.metrics import History

log = logging.getLogger("edgetl.finetune")


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    confusion: np.ndarray  # (C, C) int64, rows = true class, columns = predicted


PROGRESS_EVERY_S = 20.0  # seconds between progress lines when stderr is not a terminal


class LogProgress:
    """Iterate ``items``, logging "desc: i/n batches (p %), elapsed, ETA" every ``every_s`` seconds.

    What a run piped to a file or a CI log shows instead of tqdm's bar (which redraws one line with
    carriage returns and stays silent off a terminal): the first line after the first batch, so the
    ETA is known early, then one every ``every_s`` seconds.
    """

    def __init__(self, items: Any, desc: str, every_s: float | None = None) -> None:
        self.items, self.desc = items, desc
        self.every_s = PROGRESS_EVERY_S if every_s is None else every_s

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Any:
        total = len(self.items)
        start = last = time.perf_counter()
        for i, item in enumerate(self.items, 1):
            yield item
            now = time.perf_counter()
            if i < total and (i == 1 or now - last >= self.every_s):
                last = now
                eta = (now - start) / i * (total - i)
                log.info("%s: %d/%d batches (%d%%), %s elapsed, ETA %s", self.desc, i, total, 100 * i // total,
                         _clock(now - start), _clock(eta))  # fmt: skip


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def progress_iter(loader: DataLoader[Any], ctx: D.DistContext, enabled: bool, desc: str) -> Any:
    """A tqdm bar on a terminal; periodic log lines otherwise (files, pipes, CI); nothing when disabled."""
    if not (enabled and ctx.is_main):
        return loader
    if sys.stderr.isatty():
        return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
    return LogProgress(loader, desc)


def _autocast(device: torch.device) -> Any:
    # bf16 autocast on CUDA halves memory traffic; CPU stays fp32 (CPU autocast is slower for convs).
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader[Any], num_classes: int, ctx: D.DistContext) -> Evaluation:
    """Plain cross-entropy (no smoothing), accuracy and confusion matrix, summed over ranks."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    confusion = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=ctx.device)
    for x, y in loader:
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        with _autocast(ctx.device):
            logits = model(x).float()  # (B, C)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        confusion += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes**2).view_as(confusion)
    D.all_reduce_sum(loss_sum, ctx)
    D.all_reduce_sum(confusion, ctx)
    model.train(was_training)
    total = max(1, int(confusion.sum()))
    return Evaluation(float(loss_sum) / total, float(confusion.trace()) / total, confusion.cpu().numpy())


def train_one_epoch(
    model: nn.Module, loader: DataLoader[Any], optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, criterion: nn.Module, ctx: D.DistContext, desc: str,
    progress: bool,
) -> tuple[float, float]:  # fmt: skip
    """One pass over this rank's shard; returns (mean loss, accuracy) over all ranks."""
    model.train()
    sums = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # loss*n, correct, n
    for x, y in progress_iter(loader, ctx, progress, desc):
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        with _autocast(ctx.device):
            logits = model(x).float()
            loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        sums += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double(),
                             torch.tensor(len(y), dtype=torch.float64, device=ctx.device)])  # fmt: skip
    D.all_reduce_sum(sums, ctx)
    n = max(1.0, float(sums[2]))
    return float(sums[0]) / n, float(sums[1]) / n


LOSS_TIE_TOLERANCE = 1e-4  # a tie on accuracy is broken by a loss at least this much lower (relative), not by noise


class EarlyStopping:
    """Stop after ``patience`` epochs without a better validation result: a higher accuracy, or the same
    accuracy at a lower loss (on a small validation set accuracy ties often while the loss still falls)."""

    def __init__(self, patience: int | None) -> None:
        self.patience = patience
        self.best = -1.0
        self.best_loss = float("inf")
        self.bad_epochs = 0

    def step(self, accuracy: float, loss: float = float("inf")) -> tuple[bool, bool]:
        """Returns (improved, should_stop)."""
        if accuracy > self.best or (accuracy == self.best and loss < self.best_loss * (1 - LOSS_TIE_TOLERANCE)):
            self.best, self.best_loss, self.bad_epochs = accuracy, loss, 0
            return True, False
        self.bad_epochs += 1
        return False, self.patience is not None and self.bad_epochs >= self.patience


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def fit(
    net: nn.Module, train: DataLoader[Any], val: DataLoader[Any] | None, num_classes: int,
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, config: FinetuneConfig,
    ctx: D.DistContext, *, on_epoch: Callable[[int], bool] | None = None,
    on_best: Callable[[int, History], None] | None = None,
) -> History:  # fmt: skip
    """Train ``net`` (restored to its best-validation state on return).

    ``on_epoch(epoch)`` runs first each epoch and returns True when the trainable set changed, which
    rebuilds the DDP wrapper. ``on_best`` runs on every rank after an improvement (rank-0 guards I/O).
    """
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    stopper, history, best_state = EarlyStopping(config.patience), History(), _snapshot(net)
    wrapped = None
    for epoch in range(config.epochs):
        start = time.perf_counter()
        if (on_epoch is not None and on_epoch(epoch)) or wrapped is None:
            wrapped = D.wrap(net, ctx)
        if isinstance(train.sampler, DistributedSampler):
            train.sampler.set_epoch(epoch)
        history.lr.append(max(g["lr"] for g in optimizer.param_groups))
        loss, acc = train_one_epoch(wrapped, train, optimizer, scheduler, criterion, ctx,
                                    f"epoch {epoch + 1}/{config.epochs}", config.progress)  # fmt: skip
        D.average_bn_stats(net, ctx)
        history.train_loss.append(loss)
        history.train_acc.append(acc)
        improved, stop = True, False
        if val is not None:
            ev = evaluate(net, val, num_classes, ctx)
            history.val_loss.append(ev.loss)
            history.val_acc.append(ev.accuracy)
            improved, stop = stopper.step(ev.accuracy, ev.loss)
        history.epoch_seconds.append(time.perf_counter() - start)
        _log_epoch(epoch, history, ctx)
        if improved:
            history.best_epoch, best_state = epoch, _snapshot(net)
            if on_best is not None and val is not None:
                on_best(epoch, history)
        if stop:
            history.stopped_early = True
            break
    net.load_state_dict(best_state)
    return history


def _log_epoch(epoch: int, h: History, ctx: D.DistContext) -> None:
    if not ctx.is_main:
        return
    val = f" val loss {h.val_loss[-1]:.4f} acc {h.val_acc[-1]:.4f}" if h.val_acc else ""
    log.info(
        "epoch %d: train loss %.4f acc %.4f%s lr %.2e (%.1fs)",
        epoch + 1, h.train_loss[-1], h.train_acc[-1], val, h.lr[-1], h.epoch_seconds[-1],
    )  # fmt: skip
