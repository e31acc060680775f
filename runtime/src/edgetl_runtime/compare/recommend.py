"""The recommendation: the most accurate option within the latency budget, and how sure that is.

Accuracies come with 95 % intervals; options whose interval overlaps the best one's are called a tie (the
data cannot separate them), and the fastest of the tied is named as the tie-break. The Pareto front (no other
option both faster and more accurate) is marked for the report and the plot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from edgetl_runtime.compare.accuracy import AccuracyCell


@dataclass(frozen=True)
class Recommendation:
    """``choice`` is None when nothing can be recommended; ``text`` says why in one paragraph."""

    choice: str | None
    ranked_by: str
    budget_ms: float | None
    tie: bool = False
    tied: tuple[str, ...] = ()  # the choice and every option statistically level with it
    fastest_tied: str | None = None
    within_budget: tuple[str, ...] = ()
    over_budget: tuple[str, ...] = ()
    text: str = ""
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def recommend(
    p50_ms: Mapping[str, float],
    accuracy: Mapping[str, Mapping[str, AccuracyCell]],
    ranked_by: str,
    budget_ms: float | None,
) -> Recommendation:
    """Rank the options that meet ``budget_ms`` (batch-1 p50) by accuracy at ``ranked_by`` (e.g. ``K=5``)."""
    names = [n for n in p50_ms if ranked_by in accuracy.get(n, {})]
    within = tuple(n for n in names if budget_ms is None or p50_ms[n] <= budget_ms)
    over = tuple(n for n in p50_ms if budget_ms is not None and p50_ms[n] > budget_ms)

    def make(choice: str | None, text: str, **extra: Any) -> Recommendation:
        return Recommendation(choice, ranked_by, budget_ms, within_budget=within, over_budget=over, text=text, **extra)

    if not names:
        why = "no option has a few-shot accuracy at " + ranked_by + " (see the accuracy notes)"
        return make(None, f"No recommendation: {why}.")
    if not within:
        fastest = min(p50_ms, key=p50_ms.__getitem__)
        text = (
            f"No option meets the {budget_ms:g} ms budget (batch-1 p50 on this device): the fastest is {fastest} "
            f"at {p50_ms[fastest]:.1f} ms. Fix: raise --budget-ms, or export a smaller input size or int8."
        )
        return make(None, text)
    cells = {n: accuracy[n][ranked_by] for n in within}
    best = max(within, key=lambda n: (cells[n].mean, -p50_ms[n]))
    tied = tuple(sorted((n for n in within if cells[n].overlaps(cells[best])), key=lambda n: -cells[n].mean))
    fastest = min(tied, key=p50_ms.__getitem__)
    budget = "" if budget_ms is None else f" within {budget_ms:g} ms"
    head = f"{best}: {cells[best].mean:.1f} % at {ranked_by} [{cells[best].low:.1f}, {cells[best].high:.1f}], "
    head += f"p50 {p50_ms[best]:.2f} ms"
    if len(tied) == 1:
        runner = max((n for n in within if n != best), key=lambda n: cells[n].mean, default=None)
        margin = "" if runner is None else f"; its interval clears the next best, {runner} ({cells[runner].mean:.1f} %)"
        text = f"Recommended{budget}: {head}. Sure{margin}."
    else:
        others = ", ".join(f"{n} ({cells[n].mean:.1f} %, {p50_ms[n]:.2f} ms)" for n in tied if n != best)
        text = (
            f"Most accurate{budget}: {head}. A tie: its interval overlaps {others}, which these images cannot "
            f"separate from it. The fastest of the tied is {fastest} ({p50_ms[fastest]:.2f} ms)."
        )
    return make(best, text, tie=len(tied) > 1, tied=tied, fastest_tied=fastest)


def pareto_front(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Names whose (latency, accuracy) no other point beats on both (lower latency, higher accuracy)."""
    front = []
    for name, (lat, acc) in points.items():
        dominated = any(
            (o_lat <= lat and o_acc >= acc) and (o_lat < lat or o_acc > acc)
            for other, (o_lat, o_acc) in points.items()
            if other != name
        )
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: points[n][0])
