"""``compare_bundles``: verify, time and score bundles on this device, recommend one, write the report."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl_runtime.compare.accuracy import AccuracyCell, extract_features, score, split_masks
from edgetl_runtime.compare.config import CompareConfig
from edgetl_runtime.compare.data import LabelledFolder, read_folder, scorable_shots
from edgetl_runtime.compare.latency import OptionLatency, measure_latency, method_text
from edgetl_runtime.compare.options import Option, Problem, discover
from edgetl_runtime.compare.recommend import Recommendation, pareto_front, recommend
from edgetl_runtime.errors import BundleError

Progress = Callable[[str, int, int], None]


@dataclass
class Comparison:
    """Everything one comparison measured; ``to_dict`` is ``results.json``."""

    config: CompareConfig
    data: LabelledFolder
    options: list[Option]
    latency: dict[str, OptionLatency]
    accuracy: dict[str, dict[str, AccuracyCell]]
    columns: list[str]
    recommendation: Recommendation
    ranked_by: str  # the accuracy column ranked by: asked for, else the largest K scored
    pareto: list[str]
    problems: list[Problem]
    environment: dict[str, Any]
    wall_s: float = 0.0
    latency_s: float = 0.0  # of wall_s, the latency timing (every option's processes)
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "data": {"root": str(self.data.root), "classes": self.data.counts()},
            "columns": self.columns,
            "ranked_by": self.ranked_by,
            "options": [
                {
                    **o.to_dict(),
                    "latency": self.latency[o.name].to_dict(),
                    "accuracy": {c: cell.to_dict() for c, cell in self.accuracy.get(o.name, {}).items()},
                    "pareto": o.name in self.pareto,
                }
                for o in self.options
            ],
            "latency_method": method_text(self.config),
            "recommendation": self.recommendation.to_dict(),
            "problems": [p.to_dict() for p in self.problems],
            "environment": self.environment,
            "wall_s": self.wall_s,
            "latency_wall_s": self.latency_s,
        }


def compare_bundles(
    bundles: Sequence[str | Path],
    data: str | Path,
    config: CompareConfig | None = None,
    output_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> Comparison:
    """Compare ``bundles`` (each at every precision it ships) on the labelled folder ``data``, on this device.

    Bad input is named in the comparison's ``problems`` (and the report) while the rest is still compared: a
    bundle that fails verification, a precision that fails its golden check here, a folder with one class or
    too few images for a K, a budget no option meets. Raises only when nothing at all can be compared.
    """
    start = time.perf_counter()
    config = config or CompareConfig()
    folder = read_folder(data)
    report = progress or (lambda stage, done, total: None)
    report("verify", 0, len(bundles))
    options, problems = discover(bundles, config)
    report("verify", len(bundles), len(bundles))
    if not options:
        reasons = "; ".join(f"{p.subject}: {p.reason}" for p in problems) or "no bundle was given"
        raise BundleError(f"Nothing to compare: {reasons}")
    problems += [Problem("--data", p) for p in folder.problems]
    loads, timing = {"load_average_before_latency": _load_average()}, time.perf_counter()
    latency = measure_latency(options, config, progress)
    loads["load_average_after_latency"], timing = _load_average(), time.perf_counter() - timing
    problems += [Problem(n, f"latency: {lat.probe_error}") for n, lat in latency.items() if lat.probe_error]
    problems += _busy(latency)
    accuracy, columns = _accuracy(options, folder, config, problems, report)
    p50 = {o.name: latency[o.name].p50_ms for o in options}
    ranked_by = _ranked_by(config, columns, problems)
    recommendation = recommend(p50, accuracy, ranked_by, config.budget_ms)
    scored = {n: (p50[n], accuracy[n][ranked_by].mean) for n in p50 if ranked_by in accuracy.get(n, {})}
    comparison = Comparison(
        config, folder, options, latency, accuracy, columns, recommendation, ranked_by, pareto_front(scored),
        problems, {**_environment(), **loads},
    )  # fmt: skip
    comparison.wall_s, comparison.latency_s = time.perf_counter() - start, timing
    if output_dir is not None:
        from edgetl_runtime.compare.report import write_report

        comparison.files = write_report(comparison, Path(output_dir))
    return comparison


def _accuracy(
    options: list[Option], folder: LabelledFolder, config: CompareConfig, problems: list[Problem], report: Progress
) -> tuple[dict[str, dict[str, AccuracyCell]], list[str]]:
    """Every option's accuracy columns, on the same splits; none when the folder cannot be scored."""
    if folder.problems:
        return {}, []
    columns, _ = scorable_shots(folder.counts(), config)
    if not columns:  # not one K fits: name them without decoding a single image
        problems += [Problem("--data", why) for why in scorable_shots(folder.counts(), config)[1]]
        return {}, []
    features, labels = extract_features(options, folder, problems, report)
    counts = {c: int((labels == i).sum()) for i, c in enumerate(folder.classes)}  # unreadable files left out
    columns, skipped = scorable_shots(counts, config)
    problems += [Problem("--data", why) for why in skipped]
    masks = split_masks(labels, columns, config)
    accuracy = {}
    for i, option in enumerate(options):
        report("accuracy", i, len(options))
        accuracy[option.name] = score(features.pop(option.name), labels, columns, masks, config)
    report("accuracy", len(options), len(options))
    return accuracy, columns


def _ranked_by(config: CompareConfig, columns: list[str], problems: list[Problem]) -> str:
    """The K asked for (``rank_shots``), else the largest K the folder allowed (then all-but-one)."""
    if config.ranked_by in columns or not columns:
        return config.ranked_by
    if config.rank_shots is not None:
        problems.append(Problem("--rank-shots", f"{config.ranked_by} was not scored on this folder: nothing ranked"))
        return config.ranked_by
    fallback = max((c for c in columns if c.startswith("K=")), key=lambda c: int(c[2:]), default=columns[-1])
    problems.append(Problem("--data", f"ranked by {fallback}: {config.ranked_by} could not be scored on this folder"))
    return fallback


BUSY_SHARE = 0.1  # other processes' median CPU share above which the latency is said to be a busy machine's


def _busy(latency: dict[str, OptionLatency]) -> list[Problem]:
    """A problem when other processes took a tenth of the CPU or more while the options were timed."""
    shares = sorted(x for lat in latency.values() for x in lat.others_cpu_share if x is not None)
    if not shares or shares[len(shares) // 2] < BUSY_SHARE:
        return []
    share = shares[len(shares) // 2]
    return [Problem("latency", f"other processes took {100 * share:.0f} % of the CPU (median) while it was timed: "
                    "these are a busy machine's latencies; compare them with a bench run while it is as busy, or "
                    "rerun when it is idle")]  # fmt: skip


def _load_average() -> list[float] | None:
    """1/5/15-minute load averages: a shared machine's other work, which every latency figure depends on."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _environment() -> dict[str, Any]:
    from edgetl_runtime.backends.cpu import this_cpu
    from edgetl_runtime.measure.latency import environment

    return {**environment(), "cpu_line": this_cpu().describe(), "numpy": np.__version__}
