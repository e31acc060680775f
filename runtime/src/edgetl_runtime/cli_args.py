"""The command-line options every edgetl tool shares, defined once: backend, precision, threads, comma lists.

``edgetl-device``, ``python -m edgetl_runtime.measure.latency``, ``edgetl export`` and ``edgetl bench latency``
all take them; the choices come from the runtime's own lists, so a new backend or precision appears in
every tool at once and each tool rejects the same values with the same message.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TypeVar

from edgetl_runtime.arguments import MAX_THREADS
from edgetl_runtime.backends.base import BACKENDS
from edgetl_runtime.bundle.manifest import BEST_ORDER

T = TypeVar("T")
PRECISIONS = tuple(p.value for p in BEST_ORDER)  # int8, fp16, fp32: what a bundle can ship
PRECISION_CHOICES = ("best", *PRECISIONS)  # what a device may ask for


def positive_int(text: str) -> int:
    """An argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:  # also a number with more digits than int() converts
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text[:40]!r}")
    return value


def thread_count(text: str) -> int:
    """An argparse type: an intra-op thread count in 1..MAX_THREADS."""
    value = positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_THREADS} threads, got {text[:40]!r}")
    return value


def comma_list(item: Callable[[str], T], choices: Sequence[str] | None = None) -> Callable[[str], tuple[T, ...]]:
    """An argparse type for ``a,b,c``: each item converted by ``item`` (and one of ``choices``, when given)."""

    def parse(text: str) -> tuple[T, ...]:
        words = [w.strip() for w in text.split(",") if w.strip()]
        bad = [w for w in words if choices is not None and w not in choices]
        if bad or not words:
            among = f" of {', '.join(choices)}" if choices else ""
            raise argparse.ArgumentTypeError(f"expected a comma list{among}, got {text[:80]!r}")
        try:
            return tuple(item(w) for w in words)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise argparse.ArgumentTypeError(f"{text[:80]!r}: {exc}") from None

    parse.__name__ = f"comma list of {getattr(item, '__name__', 'values')}"  # argparse names it in errors
    return parse


def add_backend_argument(parser: argparse.ArgumentParser, choices: Sequence[str] = BACKENDS) -> None:
    parser.add_argument("--backend", default=choices[0], choices=list(choices), help="inference engine")


def add_precision_argument(
    parser: argparse.ArgumentParser, default: str = "best", choices: Sequence[str] = PRECISION_CHOICES
) -> None:
    parser.add_argument("--precision", default=default, choices=list(choices), help="backbone precision to run")


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=thread_count, default=None, help="onnxruntime intra-op threads (None: its own)"
    )
