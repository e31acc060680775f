"""Latency of every option on this device, as ``edgetl-device bench`` measures it: each option timed in
``processes`` fresh processes (``compare.probe``: batch-1 preprocessing + backbone with ``measure()``), the
processes interleaved across options in alternating order so a shared machine's drift hits all alike. The p50
is the median of the processes' p50s and its interval a 95 % prediction interval for one more process's p50
(``compare.spread``); the same processes give images per second, cold start and peak memory."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from edgetl_runtime.compare.config import CompareConfig
from edgetl_runtime.compare.options import Option
from edgetl_runtime.compare.probe import ProbeRequest, time_backend
from edgetl_runtime.compare.spread import interval, log_half_widths, median
from edgetl_runtime.measure.latency import LatencyStats, cpu_snapshot, others_share, run_json_process

Progress = Callable[[str, int, int], None]
FRESH = "fresh processes"
HERE = "this process"
PROBE_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class OptionLatency:
    """What one option costs here. ``batch1`` is what ``edgetl-device bench`` times (preprocessing + backbone):
    each of its figures is the median over processes of that process's figure (``runs``: all timed calls)."""

    batch1: LatencyStats
    p50_interval_ms: tuple[float, float]  # 95 % prediction interval of one more process's p50 (one bench run)
    batched: LatencyStats  # backbone only, ``items_per_call`` images per call, medians over processes
    process_p50_ms: tuple[float, ...] = ()  # each process's batch-1 p50, in the order they ran
    others_cpu_share: tuple[float | None, ...] = ()  # machine CPU share other processes took during each
    method: str = FRESH  # FRESH, or HERE (--no-probe, or every fresh process failed)
    interval_rule: str = ""  # spread.CONFORMAL or spread.STUDENT_T: how p50_interval_ms was drawn
    kernel: str | None = None  # the int8 kernel the timed processes ran
    cold_start_ms: float | None = None  # fresh process: build the backend + first batch-1 call (median)
    peak_rss_mb: float | None = None  # fresh process, after the batch-1 and batched timing (median)
    probe_error: str | None = None

    @property
    def p50_ms(self) -> float:
        return self.batch1.p50_ms

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["batch1"], out["batched"] = self.batch1.to_dict(), self.batched.to_dict()
        out["p50_ms"] = self.p50_ms
        out["p50_interval_ms"] = list(self.p50_interval_ms)
        out["process_p50_ms"] = list(self.process_p50_ms)
        out["others_cpu_share"] = list(self.others_cpu_share)
        return out


def measure_latency(
    options: Sequence[Option], config: CompareConfig, progress: Progress | None = None
) -> dict[str, OptionLatency]:
    """Every option's :class:`OptionLatency`, keyed by option name."""
    report = progress or (lambda stage, done, total: None)
    runs: dict[str, list[dict[str, Any]]] = {o.name: [] for o in options}
    errors: dict[str, str] = {}
    total, done = len(options) * config.processes, 0
    report("latency", 0, total)
    for round_index in range(config.processes):
        for option in options if round_index % 2 == 0 else list(reversed(options)):
            out = run_probe(request_for(option, config)) if config.probe else time_here(option, config)
            if "error" in out:
                errors[option.name] = out["error"]
            else:
                runs[option.name].append(out)
            done += 1
            report("latency", done, total)
    method = {o.name: FRESH if config.probe and runs[o.name] else HERE for o in options}
    for option in options:  # not one fresh process ran: time it here rather than not at all, and say why
        if not runs[option.name]:
            runs[option.name] = [time_here(option, config) for _ in range(config.processes)]
    p50s = {name: [r["batch1"]["p50_ms"] for r in timed] for name, timed in runs.items()}
    halves: dict[str, tuple[float, str]] = {}
    for how in (FRESH, HERE):  # pooled among the options timed alike only
        widths, rule = log_half_widths({n: v for n, v in p50s.items() if method[n] == how})
        halves.update({n: (w, rule) for n, w in widths.items()})
    return {o.name: _summary(o, runs[o.name], method[o.name], halves[o.name], errors.get(o.name)) for o in options}


def method_text(config: CompareConfig) -> str:
    """How the latency columns were measured, for ``report.md`` and ``results.json``."""
    where = f"{config.processes} fresh processes" if config.probe else f"{config.processes} repeats in one process"
    return (
        f"batch-1 p50 (preprocessing + backbone, as edgetl-device bench times it: up to {config.runs} runs after "
        f"{config.warmup} warm-up calls, {config.max_seconds:g} s cap) is the median of the p50s of {where} per "
        "option, interleaved across options in alternating order; p90/p99 and images per second are medians over "
        "them too. Its interval is a 95 % prediction interval for the p50 of one more such run, from every "
        "option's runs pooled in log space (split-conformal on leave-one-out residuals; Student t below 19 "
        "runs): where one edgetl-device bench run should fall while the machine stays as busy as it was."
    )


def request_for(option: Option, config: CompareConfig) -> ProbeRequest:
    return ProbeRequest(
        bundle=str(option.path), backend=timed_backend(option.backend_name), precision=option.precision,
        kernel=option.kernel, threads=config.threads, runs=config.runs, warmup=config.warmup,
        max_seconds=config.max_seconds, batch_size=config.batch_size,
        batched_runs=max(3, -(-max(10, config.runs // 4) // config.processes)),
    )  # fmt: skip


def timed_backend(backend_name: str) -> str:
    """The probe's name (``measure.latency.TIMED_BACKENDS``) of a built backend: ``onnxruntime-cpu`` ->
    ``onnxruntime``, execution providers and TensorRT as they are."""
    if backend_name.startswith("tensorrt"):
        return "tensorrt"
    return "onnxruntime" if backend_name in ("onnxruntime", "onnxruntime-cpu") else backend_name


def run_probe(request: ProbeRequest) -> dict[str, Any]:
    """``python -m edgetl_runtime.compare.probe`` in a fresh interpreter, with the CPU share other processes
    took meanwhile; ``{"error": ...}`` when it fails."""
    before = cpu_snapshot()
    try:
        out = run_json_process(request.command(), PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"the timing process could not run: {exc}"}
    return out if "error" in out else {**out, "others_cpu_share": others_share(before, cpu_snapshot())}


def time_here(option: Option, config: CompareConfig) -> dict[str, Any]:
    """The probe's timing on the option's backend already loaded in this process (no cold start, no memory)."""
    before = cpu_snapshot()
    out = time_backend(option.backend, option.spec, request_for(option, config))
    return {**out, "kernel": option.kernel, "others_cpu_share": others_share(before, cpu_snapshot())}


def _summary(
    option: Option, runs: list[dict[str, Any]], method: str, half: tuple[float, str], error: str | None
) -> OptionLatency:
    p50s = tuple(float(r["batch1"]["p50_ms"]) for r in runs)
    kernels = {r.get("kernel") for r in runs}
    if kernels != {option.kernel}:
        ran = sorted(map(str, kernels))
        error = error or f"the timed processes ran int8 kernel {ran}; the golden check here chose {option.kernel}"
    return OptionLatency(
        batch1=median_stats([r["batch1"] for r in runs]),
        p50_interval_ms=interval(p50s, half[0]),
        batched=median_stats([r["batched"] for r in runs]),
        process_p50_ms=p50s,
        others_cpu_share=tuple(r.get("others_cpu_share") for r in runs),
        method=method,
        interval_rule=half[1],
        kernel=option.kernel,
        cold_start_ms=_median_of(runs, "cold_start_ms"),
        peak_rss_mb=_median_of(runs, "peak_rss_mb"),
        probe_error=error,
    )


def median_stats(stats: Sequence[dict[str, Any]]) -> LatencyStats:
    """One :class:`LatencyStats` from several processes': percentiles, mean and SD the median of theirs, min and
    max over all, ``runs`` the total timed calls."""
    counts = {"runs", "warmup", "items_per_call", "min_ms", "max_ms"}
    mid = {f.name: median([float(s[f.name]) for s in stats]) for f in fields(LatencyStats) if f.name not in counts}
    return LatencyStats(
        runs=sum(int(s["runs"]) for s in stats), warmup=int(stats[0]["warmup"]),
        items_per_call=int(stats[0]["items_per_call"]), min_ms=min(float(s["min_ms"]) for s in stats),
        max_ms=max(float(s["max_ms"]) for s in stats), **mid,
    )  # fmt: skip


def _median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [float(r[key]) for r in runs if r.get(key) is not None]
    return median(values) if values else None
