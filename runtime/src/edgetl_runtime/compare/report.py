"""A comparison on disk: ``results.json`` (everything), ``report.md`` (the table, the recommendation, every
problem) and ``pareto.png`` (accuracy vs batch-1 p50, where matplotlib is installed). Written atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from edgetl_runtime._optional import is_available
from edgetl_runtime.atomic import atomic_write
from edgetl_runtime.compare.latency import method_text

if TYPE_CHECKING:
    from edgetl_runtime.compare.run import Comparison


def write_report(comparison: Comparison, output_dir: Path) -> dict[str, str]:
    """Write the files; returns ``{"json": path, "md": path, "png": path}`` (no ``png`` without matplotlib)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": str(output_dir / "results.json"), "md": str(output_dir / "report.md")}
    if is_available("matplotlib") and comparison.accuracy:
        files["png"] = str(output_dir / "pareto.png")
        _plot(comparison, Path(files["png"]))
    comparison.files = files
    with atomic_write(files["json"]) as fh:
        fh.write(json.dumps(comparison.to_dict(), indent=2).encode())
    with atomic_write(files["md"]) as fh:
        fh.write(markdown(comparison).encode())
    return files


def table(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """The options as rows (most accurate first at the ranked K), for the report and the command line."""
    c, cfg = comparison, comparison.config
    header = ["option", "backbone", "px", "prec", "kernel", "p50 ms [95 % next run]", "p90", "p99"]
    header += [f"img/s @{cfg.batch_size}"]
    header += ["load ms", "cold ms", "MB", "peak RSS MB", *c.columns, "Pareto"]
    key = c.ranked_by

    def order(name: str) -> float:
        cell = c.accuracy.get(name, {}).get(key)
        return -cell.mean if cell is not None else c.latency[name].p50_ms

    rows = []
    for o in sorted(c.options, key=lambda o: order(o.name)):
        lat = c.latency[o.name]
        low, high = lat.p50_interval_ms
        interval = f" [{low:.2f}, {high:.2f}]" if math.isfinite(low) and math.isfinite(high) else ""
        row = [o.name, o.backbone, str(o.input_size), o.precision, o.kernel or "-"]
        row += [f"{lat.p50_ms:.2f}{interval}", f"{lat.batch1.p90_ms:.2f}", f"{lat.batch1.p99_ms:.2f}"]
        row += [f"{lat.batched.throughput:.0f}", f"{o.load_ms:.0f}", _num(lat.cold_start_ms, "{:.0f}")]
        row += [f"{o.model_bytes / 2**20:.1f}", _num(lat.peak_rss_mb, "{:.0f}")]
        for column in c.columns:
            cell = c.accuracy.get(o.name, {}).get(column)
            row.append("-" if cell is None else f"{cell.mean:.1f} ± {(cell.high - cell.low) / 2:.1f}")
        rows.append([*row, "yes" if o.name in c.pareto else ""])
    return header, rows


def markdown(comparison: Comparison) -> str:
    c, cfg = comparison, comparison.config
    env = c.environment
    lines = ["# Bundle comparison on this device", ""]
    ort = env.get("versions", {}).get("onnxruntime", "?")
    threads = cfg.threads or "onnxruntime default"
    lines += [f"CPU: {env.get('cpu_line', '?')}; onnxruntime {ort}, threads {threads}; {len(c.options)} options "
              f"in {c.wall_s:.0f} s ({c.latency_s:.0f} s of latency timing); load average {_loads(env)} (before / "
              "after the latency timing).", ""]  # fmt: skip
    lines += ["## Recommendation", "", c.recommendation.text, ""]
    budget = "none" if cfg.budget_ms is None else f"{cfg.budget_ms:g} ms"
    lines += [f"Budget (batch-1 p50, preprocessing + backbone): {budget}. Ranked by few-shot accuracy at "
              f"{c.ranked_by} with the `{cfg.head}` head; intervals are 95 %, and overlapping intervals are "
              "called a tie.", ""]  # fmt: skip
    if c.recommendation.over_budget:
        lines += [f"Over the budget: {', '.join(c.recommendation.over_budget)}.", ""]
    header, rows = table(c)
    lines += ["## Options", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    counts = c.data.counts()
    lines += ["", f"Data: `{c.data.root}`, {len(counts)} classes, {sum(counts.values())} images "
              f"({min(counts.values())} to {max(counts.values())} per class). K-shot columns: {cfg.splits} random "
              "splits per K (K images per class enrolled, the rest queried), the same splits for every option; "
              "all-but-one: exact leave-one-out.", "", f"Latency: {method_text(cfg)} The interval here: "
              f"{_spread(c)}. Cold start and peak RSS: medians over the fresh processes.", ""]  # fmt: skip
    if "png" in c.files:
        lines += [f"![accuracy vs latency]({Path(c.files['png']).name})", ""]
    elif c.accuracy:
        lines += [
            "No plot: matplotlib is not installed here (`pip install matplotlib`); the table holds the points.",
            "",
        ]
    if c.problems:
        lines += ["## Left out or not measured", ""]
        lines += [f"- `{p.subject}`: {p.reason}" for p in c.problems]
        lines.append("")
    lines += ["## How each option runs here", ""]
    lines += [f"- `{o.name}`: {o.backend_name}, {o.chosen_because}" for o in c.options]
    return "\n".join(lines) + "\n"


def _plot(comparison: Comparison, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c, key = comparison, comparison.ranked_by
    names = [o.name for o in c.options if key in c.accuracy.get(o.name, {})]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name in names:
        lat, cell = c.latency[name], c.accuracy[name][key]
        low, high = (x if math.isfinite(x) else lat.p50_ms for x in lat.p50_interval_ms)
        ax.errorbar(lat.p50_ms, cell.mean, xerr=[[lat.p50_ms - low], [high - lat.p50_ms]],
                    yerr=[[cell.mean - cell.low], [cell.high - cell.mean]], fmt="o", capsize=3,
                    color="tab:red" if name == c.recommendation.choice else "tab:blue")  # fmt: skip
        ax.annotate(name, (lat.p50_ms, cell.mean), textcoords="offset points", xytext=(4, 4), fontsize=7)
    front = [n for n in c.pareto if n in names]
    ax.plot([c.latency[n].p50_ms for n in front], [c.accuracy[n][key].mean for n in front], "--", color="gray",
            label="Pareto front")  # fmt: skip
    if c.config.budget_ms is not None:
        ax.axvline(c.config.budget_ms, color="tab:orange", label=f"budget {c.config.budget_ms:g} ms")
    ax.set_xlabel("batch-1 p50 latency, preprocessing + backbone (ms)")
    ax.set_ylabel(f"few-shot accuracy at {key} (%)")
    ax.set_title(str(c.environment.get("cpu_line", ""))[:90], fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)


def _loads(env: dict[str, object]) -> str:
    before, after = env.get("load_average_before_latency"), env.get("load_average_after_latency")
    return " / ".join("?" if not isinstance(x, list) else f"{x[0]:.2f}" for x in (before, after))


def _spread(c: Comparison) -> str:
    """The intervals' half-width as a percentage and their rule, and how busy other processes kept the machine."""
    widths = {
        (round(100 * (math.sqrt(high / low) - 1), 1), lat.interval_rule)
        for lat in c.latency.values()
        for low, high in [lat.p50_interval_ms]
        if math.isfinite(low) and math.isfinite(high) and low > 0
    }
    spread = ", ".join(f"the p50 ×/÷ {1 + w / 100:.2f} ({rule})" for w, rule in sorted(widths)) or "not estimated"
    shares = sorted(x for lat in c.latency.values() for x in lat.others_cpu_share if x is not None)
    if shares:
        spread += (f"; other processes took {100 * shares[len(shares) // 2]:.0f} % of the CPU (median; "
                   f"{100 * shares[0]:.0f} to {100 * shares[-1]:.0f} %) while it was timed")  # fmt: skip
    return spread


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)
