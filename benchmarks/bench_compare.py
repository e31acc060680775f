"""How far to trust ``edgetl-device compare``: its latency against ``edgetl-device bench``, and whether two runs
recommend the same option.

Usage::

    .venv/bin/python benchmarks/bench_compare.py runs/cmp_dev1/results.json runs/cmp_dev2/results.json

For every option of the first results file, ``edgetl-device --bundle B --precision P bench`` runs in a fresh
process (batch 1, preprocessing + backbone, 100 runs: what the comparison's batch-1 column times).

Agreement, strictly: bench's p50 lies inside the comparison's p50 interval, which is a 95 % prediction
interval for the p50 of one more fresh process (``edgetl_runtime.compare.spread``). So about 95 % of options
should agree: 10 or more of 12 (at 95 % each, fewer than 10 of 12 happens 2 % of the time). With a second
results file, each later run's p50s are checked against the first run's intervals the same way (a repeat
comparison is another draw of the same process-level p50s). The CPU line and int8 kernel of bench and of the
comparison are printed side by side, and the CPU share other processes took during each bench call
(a neighbour that starts after the comparison makes bench disagree, and this shows it).

Every results file's recommendation is listed (same choice, or a tie in each, is stable). Writes
``runs/bench/compare_agreement.json``.
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
from edgetl_runtime.measure.latency import cpu_snapshot, others_share


def device_bench(bundle: str, precision: str, threads: int | None, runs: int) -> dict[str, Any]:
    """``edgetl-device ... bench`` in a fresh process, with a throwaway state, and the CPU share other
    processes took meanwhile."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "edgetl_runtime.cli", "--bundle", bundle, "--precision", precision,
                   "--state", str(Path(tmp) / "s.sqlite")]  # fmt: skip
        command += ["--threads", str(threads)] if threads else []
        before = cpu_snapshot()
        done = subprocess.run([*command, "bench", "--runs", str(runs)], capture_output=True, text=True, check=True)
        share = others_share(before, cpu_snapshot())
    out: dict[str, Any] = json.loads(done.stdout)
    return {**out, "others_cpu_share": share}


def p50_of(option: dict[str, Any]) -> float:
    """The comparison's p50 (the median of its processes' p50s; older results: the in-process p50)."""
    latency = option["latency"]
    return float(latency.get("p50_ms", latency["batch1"]["p50_ms"]))


def agreement(results: dict[str, Any], runs: int) -> list[dict[str, Any]]:
    rows = []
    for option in results["options"]:
        bench = device_bench(option["path"], option["precision"], results["config"]["threads"], runs)
        p50, (low, high) = p50_of(option), option["latency"]["p50_interval_ms"]
        other = bench["latency_ms"]["p50_ms"]
        kernel = option["latency"].get("kernel", option["kernel"])
        rows.append({
            "option": option["name"], "compare_p50_ms": p50, "compare_p50_interval_ms": [low, high],
            "bench_p50_ms": other, "bench_p90_ms": bench["latency_ms"]["p90_ms"],
            "difference_pct": 100 * (other - p50) / p50, "inside_interval": low <= other <= high,
            "kernel_compare": kernel, "kernel_bench": bench["int8_kernel"], "cpu_line_bench": bench.get("cpu_line"),
            "others_cpu_share_bench": bench["others_cpu_share"],
            "others_cpu_share_compare": option["latency"].get("others_cpu_share"),
        })  # fmt: skip
        row = rows[-1]
        busy = "?" if row["others_cpu_share_bench"] is None else f"{100 * row['others_cpu_share_bench']:.0f} %"
        same = "" if kernel == bench["int8_kernel"] else f"  KERNEL {kernel} vs {bench['int8_kernel']}"
        print(f"{row['option']:<22} compare {p50:7.2f} ms [{low:.2f}, {high:.2f}]  bench {other:7.2f} ms "
              f"({row['difference_pct']:+.1f} %, kernel {bench['int8_kernel']}, others {busy})"
              f"{'' if row['inside_interval'] else '  OUTSIDE'}{same}")  # fmt: skip
    return rows


def as_busy(results: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The bench rows whose other processes' CPU share was within what the comparison's own processes saw."""
    shares = [x for o in results["options"] for x in o["latency"].get("others_cpu_share") or [] if x is not None]
    if not shares:
        return []
    return [r for r in rows if r["others_cpu_share_bench"] is not None
            and r["others_cpu_share_bench"] <= max(shares) + 0.05]  # fmt: skip


def cross_runs(loaded: list[dict[str, Any]], paths: list[Path]) -> list[dict[str, Any]]:
    """Each later run's p50 against the first run's interval (and the first's against each later one's)."""
    first = {o["name"]: o for o in loaded[0]["options"]}
    rows = []
    for path, results in zip(paths[1:], loaded[1:], strict=True):
        for option in results["options"]:
            if option["name"] not in first:
                continue
            a, b = first[option["name"]], option
            (alow, ahigh), (blow, bhigh) = a["latency"]["p50_interval_ms"], b["latency"]["p50_interval_ms"]
            rows.append({"results": str(path), "option": option["name"], "first_p50_ms": p50_of(a),
                         "p50_ms": p50_of(b), "inside_first": alow <= p50_of(b) <= ahigh,
                         "first_inside": blow <= p50_of(a) <= bhigh})  # fmt: skip
        mine = [r for r in rows if r["results"] == str(path)]
        ins, back = sum(r["inside_first"] for r in mine), sum(r["first_inside"] for r in mine)
        print(f"{path}: its p50 inside the first run's interval for {ins} of {len(mine)}; the first's inside its "
              f"interval for {back}")  # fmt: skip
    return rows


def budget_sweep(loaded: list[dict[str, Any]], budgets: list[float]) -> list[dict[str, Any]]:
    """Each run's recommendation recomputed at each budget (and none) from its own results: stable when every
    run picks the same option, or every run calls it a tie."""
    rows = []
    for budget in [*budgets, None]:
        picks: list[dict[str, Any]] = []
        for results in loaded:
            options = results["options"]
            p50 = {o["name"]: p50_of(o) for o in options}
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
    for path, results in zip(args.results, loaded, strict=True):
        print(f"{path}: CPU {results['environment'].get('cpu_line')}; latency: {results.get('latency_method', '?')}")
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
    repeats = cross_runs(loaded, args.results)
    rows = agreement(loaded[0], args.runs)
    inside = sum(r["inside_interval"] for r in rows)
    print(f"edgetl-device bench p50 inside the comparison's p50 interval: {inside} of {len(rows)} "
          f"(a 95 % interval: 10 or more of 12 expected)")  # fmt: skip
    alike = as_busy(loaded[0], rows)
    print(f"  (not the check, to tell a wrong interval from a changed machine: of the {len(alike)} bench runs "
          f"that other processes kept no busier than the comparison's busiest process +5 points, "
          f"{sum(r['inside_interval'] for r in alike)} inside)")  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    summary = {"cpu": cpu, "recommendations": recommendations, "stable": stable, "budget_sweep": sweep,
               "agreement": rows, "inside_interval": inside, "repeat_runs": repeats,
               "repeat_inside_first": sum(r["inside_first"] for r in repeats),
               "first_inside_repeat": sum(r["first_inside"] for r in repeats),
               "as_busy_inside": [sum(r["inside_interval"] for r in alike), len(alike)]}  # fmt: skip
    args.output.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
