"""Reliability at full counts: SIGKILL trials, fuzzing, 8+1 threads, and the bad-input corpus.

Runs the same checks as ``tests/reliability`` (they share ``tests/reliability/_support.py`` and ``_fuzz.py``)
with larger counts, and writes ``runs/stress/summary.json`` with every count and the totals of lost
samples, corrupt states, undocumented exceptions, torn reads and refused bundles that cost more than
64 MiB. Exit status 1 if any total is non-zero.

    .venv/bin/python benchmarks/stress.py                      # 200 kills, 1000 examples/target, 2 x 10 s
    .venv/bin/python benchmarks/stress.py --trials 20 --examples 100 --seconds 2   # a quick look
    .venv/bin/python benchmarks/stress.py --parts crash,memory   # only the SIGKILL trials and peak memory
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from reliability import _fuzz, _support  # noqa: E402  (after the path tweak)

PARTS = ("crash", "fuzz", "memory", "concurrency", "corpus")


def crash_trials(bundle: Path, work: Path, trials: int) -> dict[str, Any]:
    keys = ("returned", "removed", "lost", "resurrected", "corrupt", "early", "aimed_remove", "in_remove")
    totals: dict[str, Any] = {"trials": trials, **dict.fromkeys(keys, 0)}
    problems = []
    for trial in range(trials):
        result = _support.crash_trial(bundle, work / f"crash{trial}.sqlite", seed=trial)
        for key in keys:
            totals[key] += int(result[key])
        if result["problems"]:
            problems.append({"trial": trial, "problems": result["problems"]})
        if trial % 20 == 19:
            print(f"  crash {trial + 1}/{trials}: {totals}", flush=True)
    return {**totals, "problems": problems[:10]}


def fuzz_all(examples: int) -> dict[str, Any]:
    fixture = _fuzz.Fixture.build()
    try:
        out = {}
        for name in sorted(_fuzz.TARGETS):
            start = time.perf_counter()
            out[name] = _fuzz.run_target(name, fixture, examples)
            out[name]["seconds"] = round(time.perf_counter() - start, 1)
            out[name]["documented_classes"] = [c.__name__ for c in _fuzz.DOCUMENTED[name]]
            print(f"  fuzz {name}: {out[name]}", flush=True)
        return out
    finally:
        fixture.close()


def pytest_counts(files: list[str], work: Path) -> dict[str, Any]:
    """Run test files in a fresh interpreter (the corpus has no count to scale) and count outcomes from JUnit XML."""
    report = work / "junit.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *files]
    code = subprocess.run(command, cwd=REPO, check=False).returncode
    suite = ElementTree.parse(report).getroot().find("testsuite")
    assert suite is not None
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return {
        **counts,
        "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
        "exit_code": code,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200, help="SIGKILL trials")
    parser.add_argument("--examples", type=int, default=1000, help="fuzz examples per target")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per concurrency run")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "stress" / "summary.json")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        parser.error(f"unknown parts {sorted(parts - set(PARTS))}; choose from {','.join(PARTS)}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgetl-stress-") as tmp:
        work = Path(tmp)
        bundle = _support.write_tiny_bundle(work / "tiny.edgetl")
        crash = {k: 0 for k in ("lost", "resurrected", "corrupt")}
        if "crash" in parts:
            print(f"crash safety: {args.trials} SIGKILL trials", flush=True)
            crash = crash_trials(bundle, work, args.trials)
        fuzz: dict[str, Any] = {}
        if "fuzz" in parts:
            print(f"fuzzing: {args.examples} examples x {len(_fuzz.TARGETS)} targets", flush=True)
            fuzz = fuzz_all(args.examples)
        memory: dict[str, Any] = {"worst_mib": 0.0, "not_refused": 0}
        if "memory" in parts:
            print("peak memory of refused hostile bundles", flush=True)
            memory = _support.refused_bundle_memory(bundle, work / "memory")
            print(f"  worst {memory['worst']}: {memory['worst_mib']} MiB", flush=True)
        concurrency = []
        for head, pause in (("ncm", 0.0), ("auto", 0.02)) if "concurrency" in parts else ():  # auto refits are O(N)
            print(f"concurrency: 8 predicting + 1 enrolling, head={head}, {args.seconds} s", flush=True)
            state = work / f"threads-{head}.sqlite"
            result = _support.run_concurrency(bundle, state, args.seconds, head=head, enrol_pause=pause)
            concurrency.append({"head": head, "enrol_pause_s": pause, **result})
            print(f"  {result}", flush=True)
        reliability = REPO / "tests" / "reliability"
        corpus = {"failures": 0, "errors": 0}
        if "corpus" in parts:
            print("bad-input corpus, security and round-2 checks", flush=True)
            names = (
                "test_bad_input_corpus.py",
                "test_security.py",
                # the round-2 controls and fixes, filed by subject
                "test_bundle_reading.py",
                "test_graph_checks.py",
                "test_image_decoding.py",
                "test_state_failures.py",
                "test_arguments.py",
                "test_memory_bounds.py",
                "test_concurrency.py",
                "test_threat_model.py",
            )
            corpus = pytest_counts([str(reliability / name) for name in names], work)
    totals = {
        "lost": crash["lost"] + crash["resurrected"],
        "corrupt": crash["corrupt"] + sum(c["corrupt"] for c in concurrency),
        "undocumented_exceptions": sum(f["undocumented"] for f in fuzz.values())
        + sum(c["n_errors"] for c in concurrency),
        "torn_reads": sum(c["torn"] for c in concurrency),
        "corpus_failures": corpus["failures"] + corpus["errors"],
        "refused_bundles_over_64_mib": memory["not_refused"]
        + int(memory["worst_mib"] > _support.MAX_REFUSED_GROWTH_MIB),
    }
    summary = {
        "command": " ".join([".venv/bin/python", "benchmarks/stress.py", *sys.argv[1:]]),
        "totals": totals,
        "crash": crash,
        "fuzz": fuzz,
        "concurrency": concurrency,
        "corpus_and_security": corpus,
        "refused_bundle_memory": memory,
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "sqlite": sqlite3.sqlite_version,
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(json.dumps({"totals": totals, "seconds": summary["seconds"], "out": str(args.out)}, indent=2))
    return 0 if not any(totals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
