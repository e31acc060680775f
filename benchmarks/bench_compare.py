"""How far to trust ``edgetl-device compare``: its latency against ``edgetl-device bench``, and whether two runs
recommend the same option.

Usage::

    .venv/bin/python benchmarks/bench_compare.py runs/cmp_dev1/results.json runs/cmp_dev2/results.json

For every option of the first results file, ``edgetl-device --bundle B --precision P bench`` runs in a fresh
process (batch 1, preprocessing + backbone, 100 runs: what the comparison's batch-1 column times); its p50
is checked against the comparison's p50 and that p50's 95 % interval. Every results file's recommendation is
listed (same choice, or a tie in each, is stable). Writes ``runs/bench/compare_agreement.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgetl_runtime.backends.cpu import this_cpu
from edgetl_runtime.compare.accuracy import AccuracyCell
from edgetl_runtime.compare.recommend import recommend


def device_bench(bundle: str, precision: str, threads: int | None, runs: int) -> dict[str, Any]:
    """``edgetl-device ... bench`` in a fresh process, with a throwaway state."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "edgetl_runtime.cli", "--bundle", bundle, "--precision", precision,
                   "--state", str(Path(tmp) / "s.sqlite")]  # fmt: skip
        command += ["--threads", str(threads)] if threads else []
        done = subprocess.run([*command, "bench", "--runs", str(runs)], capture_output=True, text=True, check=True)
    out: dict[str, Any] = json.loads(done.stdout)
    return out


def agreement(results: dict[str, Any], runs: int) -> list[dict[str, Any]]:
    rows = []
    for option in results["options"]:
        bench = device_bench(option["path"], option["precision"], results["config"]["threads"], runs)
        p50, (low, high) = option["latency"]["batch1"]["p50_ms"], option["latency"]["p50_interval_ms"]
        other = bench["latency_ms"]["p50_ms"]
        rows.append({
            "option": option["name"], "compare_p50_ms": p50, "compare_p50_interval_ms": [low, high],
            "bench_p50_ms": other, "bench_p90_ms": bench["latency_ms"]["p90_ms"],
            "difference_pct": 100 * (other - p50) / p50, "inside_interval": low <= other <= high,
            "kernel_compare": option["kernel"], "kernel_bench": bench["int8_kernel"],
        })  # fmt: skip
        row = rows[-1]
        print(f"{row['option']:<22} compare {p50:7.2f} ms [{low:.2f}, {high:.2f}]  bench {other:7.2f} ms "
              f"({row['difference_pct']:+.1f} %){'' if row['inside_interval'] else '  OUTSIDE'}")  # fmt: skip
    return rows


def budget_sweep(loaded: list[dict[str, Any]], budgets: list[float]) -> list[dict[str, Any]]:
    """Each run's recommendation recomputed at each budget (and none) from its own results: stable when every
    run picks the same option, or every run calls it a tie."""
    rows = []
    for budget in [*budgets, None]:
        picks = []
        for results in loaded:
            options = results["options"]
            p50 = {o["name"]: o["latency"]["batch1"]["p50_ms"] for o in options}
            cells = {o["name"]: {k: AccuracyCell(**v) for k, v in o["accuracy"].items()} for o in options}
            rec = recommend(p50, cells, results["ranked_by"], budget)
            picks.append(
                {"choice": rec.choice, "tie": rec.tie, "tied": list(rec.tied), "fastest_tied": rec.fastest_tied}
            )
        stable = len({p["choice"] for p in picks}) == 1 or all(p["tie"] for p in picks)
        rows.append({"budget_ms": budget, "runs": picks, "stable": stable})
        shown = "; ".join(f"{p['choice']}{' (tie: ' + ', '.join(p['tied']) + ')' if p['tie'] else ''}" for p in picks)
        print(f"budget {budget if budget is not None else 'none'} ms: {shown} -> stable {stable}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="results.json of one or more compare runs")
    parser.add_argument("--runs", type=int, default=100, help="edgetl-device bench --runs")
    parser.add_argument("--budgets", type=float, nargs="*", default=[15, 30, 45, 70],
                        help="latency budgets (ms) at which every run's recommendation is recomputed")  # fmt: skip
    parser.add_argument("--output", type=Path, default=Path("runs/bench/compare_agreement.json"))
    args = parser.parse_args(argv)
    cpu = this_cpu().describe()
    print(f"CPU: {cpu}")
    loaded = [json.loads(p.read_text()) for p in args.results]
    recommendations = [{"results": str(p), **r["recommendation"], "wall_s": r["wall_s"]}
                       for p, r in zip(args.results, loaded, strict=True)]  # fmt: skip
    for rec in recommendations:
        print(
            f"{rec['results']}: choice {rec['choice']} (tie: {rec['tie']}, tied {rec['tied']}), {rec['wall_s']:.0f} s"
        )
    sweep = budget_sweep(loaded, args.budgets)
    choices = {r["choice"] for r in recommendations}
    stable = len(choices) == 1 or all(r["tie"] for r in recommendations)
    print(f"recommendation stable across runs: {stable}")
    rows = agreement(loaded[0], args.runs)
    inside = sum(r["inside_interval"] for r in rows)
    print(f"edgetl-device bench p50 inside the comparison's p50 interval: {inside} of {len(rows)}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    summary = {"cpu": cpu, "recommendations": recommendations, "stable": stable, "budget_sweep": sweep,
               "agreement": rows, "inside_interval": inside}  # fmt: skip
    args.output.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
