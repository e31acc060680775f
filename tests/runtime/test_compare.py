"""``edgetl-device compare``: bundles verified, timed and scored on this device; every bad input named."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from tiny_bundles import tiny_onnx, write_tiny_bundle

from edgetl_runtime.cli import main as device_main
from edgetl_runtime.compare import CompareConfig, compare_bundles
from edgetl_runtime.compare import latency as latency_module
from edgetl_runtime.compare.accuracy import AccuracyCell
from edgetl_runtime.compare.latency import FRESH, HERE, median_stats, timed_backend
from edgetl_runtime.compare.probe import ProbeRequest
from edgetl_runtime.compare.recommend import pareto_front, recommend
from edgetl_runtime.compare.spread import (
    CONFORMAL,
    STUDENT_T,
    interval,
    log_half_widths,
    median,
    pooled_log_sd,
    prediction_interval,
    t_quantile,
)
from edgetl_runtime.errors import BundleError, ConfigError, DatasetError
from edgetl_runtime.measure.latency import others_share

pytestmark = pytest.mark.runtime
FAST = CompareConfig(splits=3, processes=2, runs=10, warmup=1, max_seconds=0.2, probe=False)
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture(autouse=True)
def _x86_vnni(monkeypatch: pytest.MonkeyPatch) -> None:
    """The int8 kernel choice depends on the CPU: every test here sees the same one."""
    monkeypatch.setenv("EDGETL_SIMULATE_CPU", "x86-vnni")


def photos(root: Path, per_class: dict[str, int]) -> Path:
    """A labelled folder: each class a colour plus noise, so the tiny backbone's features separate them."""
    image_module = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for name, count in per_class.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = np.clip(np.array(COLOURS[name]) + rng.normal(0, 25, (12, 12, 3)), 0, 255).astype(np.uint8)
            image_module.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def two_bundles(tmp_path: Path) -> list[Path]:
    return [
        write_tiny_bundle(tmp_path / "a.edgetl", int8_model=tiny_onnx(scale=1.01)),  # fp32 + int8
        write_tiny_bundle(tmp_path / "b.edgetl", seed=3),  # fp32 only
    ]


def test_compare_scores_every_option_and_writes_the_report(tmp_path: Path, two_bundles: list[Path]) -> None:
    data = photos(tmp_path / "photos", {"red": 8, "green": 8, "blue": 8})
    stages: list[str] = []
    result = compare_bundles(two_bundles, data, FAST, tmp_path / "cmp", lambda s, d, t: stages.append(s))
    names = [o.name for o in result.options]
    assert names == ["a:fp32", "a:int8", "b:fp32"]
    assert result.columns == ["K=1", "K=5", "all-but-one"] and result.ranked_by == "K=5"
    for name in names:
        lat = result.latency[name]
        assert lat.batch1.runs >= 20 and lat.p50_interval_ms[0] <= lat.p50_ms <= lat.p50_interval_ms[1]
        assert lat.method == HERE and len(lat.process_p50_ms) == 2 and lat.p50_ms == median(lat.process_p50_ms)
        assert lat.batched.items_per_call == 8
        for cell in result.accuracy[name].values():
            assert cell.low <= cell.mean <= cell.high
        assert result.accuracy[name]["K=5"].mean > 90  # colours are easy, even for a 1x1 conv
    assert result.recommendation.choice in names and result.recommendation.text
    assert {"verify", "latency", "features", "accuracy"} <= set(stages)
    saved = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert [o["name"] for o in saved["options"]] == names and saved["recommendation"]["choice"]
    assert "prediction interval" in saved["latency_method"] and "repeats in one process" in saved["latency_method"]
    assert saved["options"][0]["latency"]["p50_ms"] == result.latency["a:fp32"].p50_ms
    assert saved["environment"]["cpu_line"] and "load_average_after_latency" in saved["environment"]
    assert saved["options"][1]["kernel"] == "fast"  # the kernel this (simulated) CPU would run
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert result.recommendation.text in report and "| a:int8 |" in report
    plot = tmp_path / "cmp" / "pareto.png"
    assert plot.is_file() == ("png" in result.files)


def test_fresh_processes_time_each_option_as_bench_does_with_cold_start_and_peak_memory(tmp_path: Path) -> None:
    data = photos(tmp_path / "photos", {"red": 3, "blue": 3})
    bundle = write_tiny_bundle(tmp_path / "a.edgetl", int8_copy=True)
    config = CompareConfig(splits=2, processes=2, runs=10, max_seconds=0.1, shots=(1,), probe=True)
    result = compare_bundles([bundle], data, config)
    for name, kernel in (("a:fp32", None), ("a:int8", "fast")):
        lat = result.latency[name]
        assert lat.probe_error is None and lat.method == FRESH and len(lat.process_p50_ms) == 2
        assert lat.kernel == kernel  # the child ran the kernel the golden check here chose
        assert lat.cold_start_ms is not None and lat.cold_start_ms > 0
        assert lat.peak_rss_mb is not None and lat.peak_rss_mb > 10
        assert lat.batch1.runs >= 20 and lat.batched.items_per_call == 8
        assert len(lat.others_cpu_share) == 2 and all(x is None or 0 <= x <= 1 for x in lat.others_cpu_share)
    assert [p.subject for p in result.problems] in ([], ["latency"])  # "latency": this machine was busy meanwhile


def _fake_probe(p50s: dict[str, list[float]], calls: list[str]) -> object:
    """A stand-in for the fresh process: each option's next canned p50, its order recorded."""

    def run(request: ProbeRequest) -> dict[str, object]:
        name = f"{Path(request.bundle).stem}:{request.precision}"
        calls.append(name)
        if not p50s[name]:
            return {"error": "RuntimeError: no interpreter here"}
        p50 = p50s[name].pop(0)
        stats = {"runs": 10, "warmup": 1, "p50_ms": p50, "p90_ms": p50 * 1.1, "p99_ms": p50 * 1.2,
                 "mean_ms": p50, "min_ms": p50 * 0.9, "items_per_call": 1, "p95_ms": p50 * 1.15,
                 "max_ms": p50 * 1.3, "std_ms": 0.1}  # fmt: skip
        batched = {**stats, "items_per_call": 8, "p50_ms": 4 * p50}
        return {"batch1": stats, "batched": batched, "cold_start_ms": 50.0, "peak_rss_mb": 100.0 + p50,
                "kernel": "fast" if request.precision == "int8" else None}  # fmt: skip

    return run


def test_processes_interleave_options_and_the_p50_is_the_median_of_theirs(
    tmp_path: Path, two_bundles: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = photos(tmp_path / "photos", {"red": 6, "blue": 6})
    calls: list[str] = []
    canned = {"a:fp32": [2.0, 3.0, 10.0], "a:int8": [1.0, 1.1, 1.2], "b:fp32": []}  # b: every process fails
    monkeypatch.setattr(latency_module, "run_probe", _fake_probe(canned, calls))
    config = CompareConfig(splits=2, processes=3, runs=10, max_seconds=0.1, probe=True)
    result = compare_bundles(two_bundles, data, config)
    assert calls == ["a:fp32", "a:int8", "b:fp32", "b:fp32", "a:int8", "a:fp32", "a:fp32", "a:int8", "b:fp32"]
    a = result.latency["a:fp32"]
    assert a.method == FRESH and a.process_p50_ms == (2.0, 3.0, 10.0) and a.p50_ms == 3.0
    assert a.batch1.p90_ms == pytest.approx(3.3) and a.batch1.min_ms == pytest.approx(1.8) and a.batch1.runs == 30
    assert a.cold_start_ms == 50.0 and a.peak_rss_mb == 103.0 and a.batched.throughput == pytest.approx(8 / 12e-3)
    assert a.p50_interval_ms[0] < 2.0 and a.p50_interval_ms[1] > 10.0  # the spread of a and a:int8, pooled
    b = result.latency["b:fp32"]  # timed here instead, said so, and not pooled with the fresh ones
    assert b.method == HERE and len(b.process_p50_ms) == 3 and "no interpreter" in (b.probe_error or "")
    assert any(p.subject == "b:fp32" and "no interpreter" in p.reason for p in result.problems)


def test_a_kernel_other_than_the_golden_checks_choice_is_named(
    tmp_path: Path, two_bundles: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = photos(tmp_path / "photos", {"red": 6, "blue": 6})
    fake = _fake_probe({"a:fp32": [1.0, 1.0], "a:int8": [1.0, 1.0], "b:fp32": [1.0, 1.0]}, [])

    def exact(request: ProbeRequest) -> dict[str, object]:
        out = fake(request)  # type: ignore[operator]
        return {**out, "kernel": "exact"} if request.precision == "int8" else out

    monkeypatch.setattr(latency_module, "run_probe", exact)
    config = CompareConfig(splits=2, processes=2, runs=10, max_seconds=0.1, probe=True)
    result = compare_bundles(two_bundles, data, config)
    assert "ran int8 kernel ['exact']" in (result.latency["a:int8"].probe_error or "")
    assert result.latency["a:fp32"].probe_error is None


def test_a_machine_other_processes_kept_busy_is_named(
    tmp_path: Path, two_bundles: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = photos(tmp_path / "photos", {"red": 6, "blue": 6})
    fake = _fake_probe({"a:fp32": [1.0, 1.0], "a:int8": [1.0, 1.0], "b:fp32": [1.0, 1.0]}, [])
    monkeypatch.setattr(latency_module, "run_probe", lambda r: {**fake(r), "others_cpu_share": 0.45})  # type: ignore[operator]
    config = CompareConfig(splits=2, processes=2, runs=10, max_seconds=0.1, probe=True)
    result = compare_bundles(two_bundles, data, config, tmp_path / "cmp")
    assert result.latency["a:fp32"].others_cpu_share == (0.45, 0.45)
    busy = [p.reason for p in result.problems if p.subject == "latency"]
    assert len(busy) == 1 and "took 45 % of the CPU" in busy[0]
    assert "took 45 % of the CPU (median" in (tmp_path / "cmp" / "report.md").read_text()


def test_others_cpu_share_is_the_busy_time_that_was_not_ours() -> None:
    # (machine busy s, machine total s, our CPU s): 2 cores x 10 s, 12 s busy of which 4 s ours
    assert others_share((100.0, 1000.0, 5.0), (112.0, 1020.0, 9.0)) == 0.4
    assert others_share(None, (1.0, 2.0, 3.0)) is None and others_share((1.0, 2.0, 0.0), (1.0, 2.3, 0.0)) is None


def test_backend_names_map_to_what_the_probe_times() -> None:
    assert timed_backend("onnxruntime-cpu") == "onnxruntime"
    assert timed_backend("onnxruntime-cuda") == "onnxruntime-cuda"
    assert timed_backend("tensorrt-fp16") == "tensorrt"


def test_median_stats_takes_medians_and_the_extremes() -> None:
    one = {"runs": 10, "warmup": 2, "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 3.0, "mean_ms": 1.5, "min_ms": 0.5,
           "items_per_call": 1, "p95_ms": 2.5, "max_ms": 4.0, "std_ms": 0.2}  # fmt: skip
    stats = median_stats([one, {**one, "p50_ms": 3.0, "min_ms": 0.1}, {**one, "p50_ms": 2.0, "max_ms": 9.0}])
    assert stats.p50_ms == 2.0 and stats.min_ms == 0.1 and stats.max_ms == 9.0 and stats.runs == 30


def test_bundle_failing_verification_is_named_and_the_rest_compared(tmp_path: Path, two_bundles: list[Path]) -> None:
    data = photos(tmp_path / "photos", {"red": 6, "blue": 6})
    broken = tmp_path / "broken.edgetl"
    broken.write_bytes(two_bundles[1].read_bytes()[:-200])
    result = compare_bundles([two_bundles[0], broken], data, FAST, tmp_path / "cmp")
    assert [o.name for o in result.options] == ["a:fp32", "a:int8"]
    assert [p.subject for p in result.problems] == [str(broken)]
    assert "fails verification" in result.problems[0].reason
    assert str(broken) in (tmp_path / "cmp" / "report.md").read_text()


def test_precision_failing_its_golden_check_is_named(tmp_path: Path) -> None:
    data = photos(tmp_path / "photos", {"red": 6, "blue": 6})
    bad = write_tiny_bundle(tmp_path / "bad.edgetl", int8_model=tiny_onnx(seed=1))  # int8 is another model
    result = compare_bundles([bad], data, FAST)
    assert [o.name for o in result.options] == ["bad:fp32"]
    assert [p.subject for p in result.problems] == ["bad:int8"]
    assert "golden" in result.problems[0].reason


def test_one_class_folder_measures_latency_and_names_why_there_is_no_accuracy(
    tmp_path: Path, two_bundles: list[Path]
) -> None:
    data = photos(tmp_path / "photos", {"red": 6})
    result = compare_bundles(two_bundles, data, FAST)
    assert result.accuracy == {} and len(result.latency) == 3
    assert any("one class" in p.reason for p in result.problems)
    assert result.recommendation.choice is None and "No recommendation" in result.recommendation.text


def test_class_with_too_few_images_for_k_is_named_and_ranking_falls_back(
    tmp_path: Path, two_bundles: list[Path]
) -> None:
    data = photos(tmp_path / "photos", {"red": 8, "blue": 3})  # K=5 needs 6 per class
    result = compare_bundles(two_bundles, data, FAST)
    assert result.columns == ["K=1", "all-but-one"] and result.ranked_by == "K=1"
    reasons = " ".join(p.reason for p in result.problems)
    assert "K=5 not scored" in reasons and "'blue' has 3" in reasons and "ranked by K=1" in reasons
    assert result.recommendation.choice is not None


def test_budget_no_option_meets_is_named(tmp_path: Path, two_bundles: list[Path]) -> None:
    data = photos(tmp_path / "photos", {"red": 6, "blue": 6})
    config = CompareConfig(splits=3, runs=10, max_seconds=0.1, probe=False, budget_ms=1e-6)
    result = compare_bundles(two_bundles, data, config, tmp_path / "cmp")
    assert result.recommendation.choice is None
    assert "No option meets the 1e-06 ms budget" in result.recommendation.text
    assert set(result.recommendation.over_budget) == {"a:fp32", "a:int8", "b:fp32"}
    assert "Over the budget" in (tmp_path / "cmp" / "report.md").read_text()


def test_nothing_comparable_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = photos(tmp_path / "photos", {"red": 3, "blue": 3})
    broken = tmp_path / "broken.edgetl"
    broken.write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="Nothing to compare"):
        compare_bundles([broken], data, FAST)
    assert device_main(["compare", str(broken), "--data", str(data), "-o", str(tmp_path / "cmp")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error:" in line]  # beside progress lines
    assert len(errors) == 1 and errors[0].startswith("edgetl-device compare: error: Nothing to compare")


@pytest.mark.parametrize("layout", ["missing", "empty", "loose images"])
def test_folder_without_class_folders_is_a_one_line_error(layout: str, tmp_path: Path) -> None:
    bundle = write_tiny_bundle(tmp_path / "a.edgetl")
    folder = tmp_path / "photos"
    if layout != "missing":
        folder.mkdir()
    if layout == "loose images":
        (folder / "x.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="--data"):
        compare_bundles([bundle], folder, FAST)


def test_device_cli_compare_prints_the_recommendation(
    tmp_path: Path, two_bundles: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data = photos(tmp_path / "photos", {"red": 6, "blue": 6})
    argv = ["compare", str(two_bundles[0].parent), "--data", str(data), "--splits", "2", "--runs", "10"]  # a folder
    argv += ["--max-seconds", "0.1", "--no-probe", "--budget-ms", "1000", "-o", str(tmp_path / "cmp")]
    assert device_main(argv) == 0
    out = capsys.readouterr().out
    assert "within 1000 ms" in out and "wrote md:" in out and "3 options compared" in out
    assert (tmp_path / "cmp" / "results.json").is_file()


def test_config_validation_names_every_problem() -> None:
    with pytest.raises(ConfigError, match=r"5 problems") as info:
        CompareConfig(shots=(0,), splits=1, budget_ms=-1, head="nope", processes=1)
    assert "splits must be >= 2" in str(info.value) and "processes must be >= 2" in str(info.value)


def _cell(mean: float, half: float) -> AccuracyCell:
    return AccuracyCell("K=5", mean, mean - half, mean + half, 20, 100, "test")


def test_recommendation_calls_overlapping_intervals_a_tie_and_names_the_fastest() -> None:
    p50 = {"big": 20.0, "mid": 9.0, "small": 4.0}
    tied = recommend(p50, {"big": {"K=5": _cell(80, 1)}, "mid": {"K=5": _cell(79, 1.5)},
                           "small": {"K=5": _cell(70, 1)}}, "K=5", 15)  # fmt: skip
    assert tied.choice == "mid" and not tied.tie and tied.over_budget == ("big",)
    level = recommend(p50, {"big": {"K=5": _cell(80, 1)}, "mid": {"K=5": _cell(79, 1.5)},
                            "small": {"K=5": _cell(77, 0.5)}}, "K=5", None)  # fmt: skip
    assert level.choice == "big" and level.tie and set(level.tied) == {"big", "mid"}
    assert level.fastest_tied == "mid" and "A tie" in level.text


def test_pareto_front() -> None:
    assert pareto_front({"a": (1.0, 60.0), "b": (2.0, 70.0), "c": (3.0, 65.0)}) == ["a", "b"]


def test_t_quantiles_match_the_tables() -> None:
    for df, table in ((1, 12.7062), (2, 4.3027), (3, 3.1824), (5, 2.5706), (10, 2.2281), (36, 2.0281)):
        assert t_quantile(0.975, df) == pytest.approx(table, abs=0.005)
    assert math.isnan(t_quantile(0.975, 0))


def test_pooled_log_sd_and_the_prediction_interval() -> None:
    sd, df = pooled_log_sd([[1.0, math.e], [10.0, 10 * math.e], [5.0]])  # log spread 1 in each pair
    assert df == 2 and sd == pytest.approx(math.sqrt(0.5))
    low, high = prediction_interval([2.0, 3.0, 4.0], 0.1, 20)
    assert low < 3.0 < high and low * high == pytest.approx(9.0)  # symmetric in log space about the median
    wider = prediction_interval([2.0, 3.0, 4.0], 0.2, 20)
    assert wider[0] < low and wider[1] > high
    assert all(math.isnan(x) for x in prediction_interval([2.0], float("nan"), 0))


def test_enough_processes_get_the_conformal_interval_and_a_few_the_student_t_one() -> None:
    many = {f"o{i}": [1.0 + i, 1.1 + i, 1.2 + i, 1.3 + i] for i in range(5)}  # 20 residuals
    widths, rule = log_half_widths(many)
    assert rule == CONFORMAL and len(set(widths.values())) == 1 and 0 < widths["o0"] < 0.3
    few, rule = log_half_widths({"a": [1.0, 1.1, 1.2], "b": [2.0, 2.1]})
    assert rule == STUDENT_T and few["b"] > few["a"] > 0  # fewer values, a wider interval about their median
    assert all(math.isnan(x) for x in interval([2.0], log_half_widths({"a": [2.0]})[0]["a"]))


def _simulated_coverage(slow_share: float, trials: int = 300) -> dict[str, float]:
    """12 options x 4 processes, each process's p50 log-normal about its option's, a ``slow_share`` of them in
    a slow spell (25-40 % slower), then one more process per option: how often its p50 is inside."""
    rng = np.random.default_rng(0)
    inside = {"conformal": 0, "student-t": 0}
    for _ in range(trials):
        centers, sigma = rng.uniform(1, 30, 12), rng.uniform(0.02, 0.2)

        def draw(n: int, c: float, sigma: float = sigma) -> np.ndarray:
            slow = rng.random(n) < slow_share
            return c * np.exp(rng.normal(0, sigma, n) + slow * rng.uniform(0.22, 0.34, n))

        runs = {f"o{i}": list(draw(4, c)) for i, c in enumerate(centers)}
        conformal, _ = log_half_widths(runs)
        sd, df = pooled_log_sd(list(runs.values()))
        for (name, values), c in zip(runs.items(), centers, strict=True):
            new = float(draw(1, c)[0])
            low, high = interval(values, conformal[name])
            inside["conformal"] += low <= new <= high
            low, high = prediction_interval(values, sd, df)
            inside["student-t"] += low <= new <= high
    return {k: v / (trials * 12) for k, v in inside.items()}


def test_one_more_process_falls_inside_its_interval_about_95_percent_of_the_time() -> None:
    """What the interval claims, simulated (seeded, so exact; no timing involved): log-normal scatter, with and
    without slow spells; the conformal interval (the one a dozen options get) holds in both."""
    plain, spells = _simulated_coverage(0.0), _simulated_coverage(0.1)
    assert 0.94 < plain["conformal"] < 0.98 and 0.93 < plain["student-t"] < 0.97
    assert 0.94 < spells["conformal"] < 0.98
