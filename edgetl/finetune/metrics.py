"""The outcome of a fine-tuning run: curves, accuracies, confusion matrix, timings; JSON + PNG."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.finetune.checkpoint import write_atomic

METRICS_JSON = "metrics.json"
CURVES_PNG = "curves.png"


@dataclass
class History:
    """What :func:`fit` observed, epoch by epoch."""

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    best_epoch: int = -1  # index into the lists above; metrics.json and the CLI count epochs from 1 (``epoch``)
    stopped_early: bool = False


def best_epoch_number(index: int) -> int | None:
    """The best epoch as people count it (from 1), None when there was none; one convention for every output."""
    return index + 1 if index >= 0 else None


@dataclass(kw_only=True)
class FinetuneResult(History):
    """The per-epoch curves (:class:`History`: losses, accuracies, LR, best epoch) plus the final numbers.
    Accuracies are fractions in [0, 1]."""

    strategy: str
    classes: list[str]
    val_accuracy: float | None = None  # at the best epoch
    test_accuracy: float | None = None
    test_loss: float | None = None
    confusion: np.ndarray | None = None  # (C, C) on test, else val; rows = true class
    confusion_split: str | None = None
    wall_time_s: float = 0.0
    cpu_time_s: float = 0.0  # this process's CPU time: comparable across runs on a shared machine
    feature_seconds: float | None = None  # linear probe: time to compute the cached features
    train_size: int = 0
    world_size: int = 1
    output_dir: str | None = None

    @property
    def epochs_run(self) -> int:
        return len(self.train_loss)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["confusion"] = None if self.confusion is None else np.asarray(self.confusion).tolist()
        d["epochs_run"] = self.epochs_run
        d["best_epoch"] = best_epoch_number(self.best_epoch)  # counted from 1, as the log and the CLI print it
        return d

    def save(self, output_dir: Path) -> None:
        """``metrics.json`` and ``curves.png`` in ``output_dir``."""
        output_dir = Path(output_dir)
        write_atomic(output_dir / METRICS_JSON, (json.dumps(self.to_dict(), indent=2) + "\n").encode())
        plot_curves(self, output_dir / CURVES_PNG)


def plot_curves(result: FinetuneResult, path: Path) -> None:
    """Loss and accuracy per epoch, and the confusion matrix. Uses the Agg canvas: no display, no pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc, ax_cm = fig.subplots(1, 3)
    epochs = np.arange(1, result.epochs_run + 1)
    for ax, key, title in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        ax.plot(epochs, getattr(result, f"train_{key}"), "o-", label="train")
        if getattr(result, f"val_{key}"):
            ax.plot(epochs[: len(getattr(result, f"val_{key}"))], getattr(result, f"val_{key}"), "s-", label="val")
        if result.best_epoch >= 0:
            ax.axvline(result.best_epoch + 1, color="gray", ls="--", lw=1, label="best")
        ax.set(xlabel="epoch", title=f"{result.strategy}: {title}")
        ax.legend()
    if result.confusion is not None:
        cm = np.asarray(result.confusion)
        ax_cm.imshow(cm, cmap="Blues")
        n = len(result.classes)
        ax_cm.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true",
                  title=f"confusion ({result.confusion_split})")  # fmt: skip
        ax_cm.set_xticklabels(result.classes, rotation=60, ha="right", fontsize=7)
        ax_cm.set_yticklabels(result.classes, fontsize=7)
        for (i, j), v in np.ndenumerate(cm):
            ax_cm.text(
                j, i, str(v), ha="center", va="center", fontsize=6, color="white" if v > cm.max() / 2 else "black"
            )
    else:
        ax_cm.axis("off")
    fig.savefig(path, dpi=110)
