"""``edgetl demo``: the end-to-end run behind ``make demo``."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("demo", help="fine-tune, export, adapt on a simulated device, benchmark, report")
    p.add_argument("--image-size", type=int, default=96, help="a multiple of 32")
    p.add_argument("--seeds", type=int, default=5, help="few-shot episodes per K")
    p.add_argument("--epochs", type=int, default=2, help="host fine-tuning epochs")
    p.add_argument("-o", "--output", type=Path, default=Path("runs/demo"), help="run folder (report.md and files)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgetl.demo import DemoConfig, run_demo

    run_demo(DemoConfig(image_size=args.image_size, seeds=args.seeds, finetune_epochs=args.epochs, output=args.output))
    return 0
