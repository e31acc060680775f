"""``edgetl finetune``: parse arguments, build a :class:`FinetuneConfig`, call :func:`edgetl.finetune.finetune`.

Runs the same under ``torchrun --nproc_per_node=N -m edgetl.cli finetune ...`` (data-parallel).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from edgetl.commands.common import load_data
from edgetl.datasets import ImageDataset, balanced_subset, k_shot, stratified_split
from edgetl_runtime.errors import ConfigError

STRATEGIES = ("linear-probe", "partial", "full", "gradual")
# CLI flag -> FinetuneConfig field; unset flags keep the strategy preset's value.
_CONFIG_FLAGS = (
    "epochs", "lr", "batch_size", "freeze_stages", "layer_decay", "label_smoothing", "weight_decay",
    "warmup_epochs", "seed", "workers", "val_fraction", "unfreeze_every", "optimizer", "device",
)  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("finetune", help="fine-tune a backbone on labelled images (linear probe ... full)")
    p.add_argument("model", help="backbone name (e.g. tf_efficientnet_lite0, mobilenetv3_small_100)")
    p.add_argument("--weights", default="bundled", help="bundled | hub | none | PATH")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist or an image folder (one subfolder per class)")
    p.add_argument("--classes", default=None, help="subset of class ids, e.g. 0-4 or 0,2,7")
    p.add_argument("--strategy", default="linear-probe", choices=STRATEGIES)
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int, help="per process")
    p.add_argument("--image-size", type=int, default=None, help="square input resolution (default: the model's)")
    p.add_argument("--train-per-class", type=int, default=None, help="use at most N training images per class")
    p.add_argument("--k-shot", type=int, default=None, help="use exactly K training images per class")
    p.add_argument("--test-per-class", type=int, default=None, help="evaluate on at most N test images per class")
    p.add_argument("--test-fraction", type=float, default=0.2, help="image folders: fraction held out for test")
    p.add_argument("--val-fraction", type=float, help="fraction of train held out for early stopping")
    p.add_argument("--freeze-stages", type=int, help="partial: freeze the first N stages (stem first)")
    p.add_argument("--unfreeze-every", type=int, help="gradual: epochs between unfreezing stages")
    p.add_argument("--layer-decay", type=float, help="LR multiplier per stage towards the stem (1 = off)")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--optimizer", choices=("adamw", "sgd"))
    p.add_argument("--patience", type=int, default=None, help="early-stopping patience in epochs (0 = off)")
    p.add_argument("--freeze-bn", action="store_true", help="keep every BatchNorm in eval mode")
    p.add_argument("--no-augment", action="store_true", help="train on the eval transform")
    p.add_argument("--feature-cache", default=None, help="linear probe: folder for cached backbone features (.npz)")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process (default: torch's)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("-o", "--output", required=True, type=Path, help="run folder (checkpoint, metrics.json, curves.png)")
    p.set_defaults(func=run_finetune)


def parse_classes(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,2,7-8"`` -> [0, 2, 7, 8]."""
    ids: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, _, hi = part.partition("-")
            ids.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ConfigError(f"--classes {text!r} is not a list of class ids like 0-4 or 0,2,7.") from None
    if len(set(ids)) != len(ids) or not ids:
        raise ConfigError(f"--classes {text!r} must name each class once, e.g. 0-4 or 0,2,7.")
    return ids


def build_config(args: argparse.Namespace) -> Any:
    """The strategy's preset, overridden by the flags the user set."""
    from edgetl.finetune import FinetuneConfig

    overrides = {k: getattr(args, k) for k in _CONFIG_FLAGS if getattr(args, k) is not None}
    if args.patience is not None:
        overrides["patience"] = args.patience or None
    overrides.update(freeze_bn=args.freeze_bn, augment=not args.no_augment, feature_cache_dir=args.feature_cache)
    preset = getattr(FinetuneConfig, args.strategy.replace("-", "_"))
    return preset(**overrides)


def load_splits(args: argparse.Namespace) -> tuple[ImageDataset, ImageDataset]:
    """Train and test sets after the class subset, K-shot / per-class sampling."""
    seed = args.seed or 0
    if args.data.lower() in {"fashion-mnist", "fashion_mnist", "fmnist"}:
        train, test = load_data(args.data, "train"), load_data(args.data, "test")
    else:
        if not 0 < args.test_fraction < 1:
            raise ConfigError(f"--test-fraction must lie in (0, 1), got {args.test_fraction}.")
        full = load_data(args.data)
        test, train = stratified_split(full, [args.test_fraction, 1 - args.test_fraction], seed=seed)
    if args.classes:
        ids = parse_classes(args.classes)
        bad = [i for i in ids if not 0 <= i < len(train.classes)]
        if bad:
            raise ConfigError(f"--classes {bad} out of range; the data has classes 0..{len(train.classes) - 1}.")
        train, test = train.select_classes(ids), test.select_classes(ids)
    if args.k_shot is not None:
        train = k_shot(train, args.k_shot, seed=seed)[0]
    if args.train_per_class is not None:
        train = balanced_subset(train, args.train_per_class, seed=seed)
    if args.test_per_class is not None:
        test = balanced_subset(test, args.test_per_class, seed=seed)
    return train, test


def run_finetune(args: argparse.Namespace) -> int:
    from edgetl.backbones import create_backbone
    from edgetl.finetune import finetune

    main_rank = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(level=logging.INFO if main_rank else logging.WARNING, format="%(message)s")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    config = build_config(args)
    train, test = load_splits(args)
    backbone = create_backbone(args.model, weights=args.weights, image_size=args.image_size)
    result = finetune(backbone, train, None, test, config, args.output)
    if main_rank:
        val = f"{result.val_accuracy:.4f}" if result.val_accuracy is not None else "n/a"
        test_acc = f"{result.test_accuracy:.4f}" if result.test_accuracy is not None else "n/a"
        print(
            f"{config.strategy.value}: {result.train_size} train images, {result.epochs_run} epochs "
            f"(best {result.best_epoch + 1}), val acc {val}, test acc {test_acc} on {len(test)} images, "
            f"{result.wall_time_s:.1f}s wall ({result.cpu_time_s:.1f}s CPU) x {result.world_size} process(es) "
            f"-> {args.output}"
        )
    return 0
