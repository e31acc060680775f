"""``edgetl finetune``: parse arguments, build a :class:`FinetuneConfig`, call :func:`edgetl.finetune.finetune`.

Runs the same under ``torchrun --nproc_per_node=N -m edgetl.cli finetune ...`` (data-parallel).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from edgetl.sources import SplitRule, data_record, load_splits
from edgetl_runtime.errors import ConfigError

STRATEGIES = ("linear-probe", "partial", "full", "gradual")
# CLI flag -> FinetuneConfig field; unset flags keep the strategy preset's value.
_CONFIG_FLAGS = (
    "epochs", "lr", "batch_size", "freeze_stages", "layer_decay", "label_smoothing", "weight_decay",
    "warmup_epochs", "seed", "workers", "val_fraction", "unfreeze_every", "optimizer", "device",
)  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("finetune", help="fine-tune a backbone on labelled images (linear probe ... full)")
    p.add_argument(
        "model", nargs="?", help="backbone name (e.g. tf_efficientnet_lite0, mobilenetv3_small_100); or from --config"
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a run's edgetl_config.json (or a JSON of flag: value) to start from; flags given here override it",
    )
    p.add_argument("--weights", default="bundled", help="bundled | hub | none (random: a warning) | PATH")
    p.add_argument(
        "--data",
        default="fashion-mnist",
        help="fashion-mnist, a folder of class folders, or a folder of train/ + val/ (+ test/) split folders "
        "each holding class folders (used as the splits)",
    )
    p.add_argument("--classes", default=None, help="subset of class ids, e.g. 0-4 or 0,2,7 (None: all)")
    p.add_argument("--strategy", default="linear-probe", choices=STRATEGIES, help="which weights train")
    p.add_argument("--epochs", type=int, help="passes over the training data (None: the strategy's preset)")
    p.add_argument("--lr", type=float, help="peak learning rate (None: the strategy's preset)")
    p.add_argument("--batch-size", type=int, help="images per step and process (None: the strategy's preset)")
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="square input resolution (None: the model's); tf_* models need a multiple of 32",
    )
    p.add_argument("--train-per-class", type=int, default=None, help="use at most N training images per class")
    p.add_argument("--k-shot", type=int, default=None, help="use exactly K training images per class")
    p.add_argument("--test-per-class", type=int, default=None, help="evaluate on at most N test images per class")
    p.add_argument(
        "--test-fraction", type=float, default=0.2, help="a folder of class folders: fraction held out for test"
    )
    p.add_argument("--val-fraction", type=float, help="fraction of train held out for early stopping (no val/ split)")
    p.add_argument("--freeze-stages", type=int, help="partial: freeze the first N stages (stem first)")
    p.add_argument("--unfreeze-every", type=int, help="gradual: epochs between unfreezing stages")
    p.add_argument("--layer-decay", type=float, help="LR multiplier per stage towards the stem (1 = off)")
    p.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing (None: the preset's)")
    p.add_argument("--weight-decay", type=float, help="AdamW/SGD weight decay (None: the preset's)")
    p.add_argument("--warmup-epochs", type=float, help="linear LR warm-up length in epochs (None: the preset's)")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), help="optimizer (None: the preset's, adamw)")
    p.add_argument("--patience", type=int, default=None, help="early-stopping patience in epochs (0 = off)")
    p.add_argument("--freeze-bn", action="store_true", help="keep every BatchNorm in eval mode")
    p.add_argument("--no-augment", action="store_true", help="train on the eval transform")
    p.add_argument("--feature-cache", default=None, help="linear probe: folder for cached backbone features (.npz)")
    p.add_argument("--seed", type=int, help="random seed for splits, init and shuffling (None: 0)")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (None: 0, in-process)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process (None: torch's)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (None: cuda if available)")
    p.add_argument("-o", "--output", required=True, type=Path, help="run folder (checkpoint, metrics.json, curves.png)")
    p.set_defaults(func=run_finetune)


# Flags a saved run config may set (everything but where this run goes and the config file itself).
_NOT_FROM_CONFIG = {"config", "output", "func", "command"}


def resolve_config_file(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the flags not given on the command line from ``--config`` (a run's ``edgetl_config.json``, whose
    ``command`` entry holds the flags that made it, or a plain JSON object of flag: value)."""
    if args.config is None:
        if args.model is None:
            raise ConfigError("finetune needs a model name, e.g. `edgetl finetune tf_efficientnet_lite0 ...`.")
        return args
    from edgetl.cli import build_parser

    try:
        saved = json.loads(Path(args.config).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--config {args.config} could not be read as JSON ({exc}). Fix: pass a run's "
                          "edgetl_config.json or a JSON object of flags.") from None  # fmt: skip
    flags = saved.get("command", saved) if isinstance(saved, dict) else None
    if not isinstance(flags, dict):
        raise ConfigError(
            f"--config {args.config} holds no flags: expected a JSON object or a run's edgetl_config.json."
        )
    defaults = vars(build_parser().parse_args(["finetune", "-o", "."]))
    flags = {str(k).replace("-", "_"): v for k, v in flags.items() if str(k).replace("-", "_") not in _NOT_FROM_CONFIG}
    unknown = sorted(set(flags) - set(defaults))
    if unknown:
        raise ConfigError(f"--config {args.config} sets unknown flags {unknown}; see `edgetl finetune --help`.")
    for key, value in flags.items():
        if getattr(args, key) == defaults[key]:  # not given on the command line
            setattr(args, key, value)
    return resolve_config_file(argparse.Namespace(**{**vars(args), "config": None}))


def build_config(args: argparse.Namespace) -> Any:
    """The strategy's preset, overridden by the flags the user set."""
    from edgetl.finetune import FinetuneConfig

    overrides = {k: getattr(args, k) for k in _CONFIG_FLAGS if getattr(args, k) is not None}
    if args.patience is not None:
        overrides["patience"] = args.patience or None
    overrides.update(freeze_bn=args.freeze_bn, augment=not args.no_augment, feature_cache_dir=args.feature_cache)
    preset = getattr(FinetuneConfig, args.strategy.replace("-", "_"))
    return preset(**overrides)


def split_rule(args: argparse.Namespace) -> SplitRule:
    """The data flags of ``edgetl finetune`` as a :class:`edgetl.sources.SplitRule`."""
    return SplitRule(
        args.seed or 0, args.test_fraction, args.classes, args.k_shot, args.train_per_class, args.test_per_class
    )


def command_record(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that made this run (``--config`` replays them), data as an absolute path."""
    flags = {k: v for k, v in vars(args).items() if k not in _NOT_FROM_CONFIG}
    flags["data"] = data_record(args.data, args.classes)["source"]
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in flags.items()}


def run_finetune(args: argparse.Namespace) -> int:
    from edgetl.backbones import create_backbone
    from edgetl.finetune import finetune
    from edgetl.finetune.metrics import best_epoch_number

    args = resolve_config_file(args)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(level=logging.INFO if main_rank else logging.WARNING, format="%(message)s")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    config = build_config(args)
    if args.weights == "none" and main_rank:
        print(
            "edgetl finetune: warning: --weights none starts from random weights (training from scratch needs "
            "far more data and epochs); use --weights bundled or hub for ImageNet features.",
            file=sys.stderr,
        )
    # The backbone first: a size it cannot export (tf_* models off multiples of 32) fails before any data loads.
    backbone = create_backbone(args.model, weights=args.weights, image_size=args.image_size)
    train, val, test = load_splits(args.data, split_rule(args))
    provenance = {"data": data_record(args.data, args.classes), "command": command_record(args)}
    result = finetune(backbone, train, val, test, config, args.output, provenance=provenance)
    if main_rank:
        val_acc = f"{result.val_accuracy:.4f}" if result.val_accuracy is not None else "n/a"
        test_acc = f"{result.test_accuracy:.4f}" if result.test_accuracy is not None else "n/a"
        tested, best = (len(test) if test is not None else 0), best_epoch_number(result.best_epoch)
        print(
            f"{config.strategy.value}: {result.train_size} train images, {result.epochs_run} epochs "
            f"(best {best}), val acc {val_acc}, test acc {test_acc} on {tested} images, "
            f"{result.wall_time_s:.1f}s wall ({result.cpu_time_s:.1f}s CPU) x {result.world_size} process(es) "
            f"-> {args.output}"
        )
    return 0
