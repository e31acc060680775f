"""The targets and their pass/fail logic: one :class:`TargetRow` per judged figure of a ``run_targets`` result.

Pure functions of the result dict, so the judging can be tested without measuring anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SIZE_RATIO_MAX = 0.30
INT8_DROP_MAX = 0.5  # accuracy points
# int8 / fp32 latency goals per CPU family: VNNI (and ARM dot products) make int8 dot products 4x an
# fp32 FMA; AVX2 without VNNI at most 2x, so its goal is the measured floor's neighbourhood.
LATENCY_RATIO_MAX = {"x86-vnni": 0.55, "x86-avx2": 0.70}
LATENCY_RATIO_DEFAULT = 0.55
FEWSHOT_MIN = {1: 58.0, 5: 75.0, 10: 79.0, 20: 82.0}  # % with the auto head, fp32 and int8
FIT_SPEEDUP_MIN = 100.0
ENROL_MS_MAX = 2.0
PACKAGING_TEST = "tests/packaging/test_runtime_without_torch.py"


@dataclass(frozen=True)
class TargetRow:
    """One judged figure: ``passed`` is None when it is reported but not measured or not judged here."""

    id: str
    name: str
    value: str
    target: str
    passed: bool | None
    method: str

    @property
    def status(self) -> str:
        return {True: "PASS", False: "FAIL", None: "n/a"}[self.passed]


def judge(result: dict[str, Any]) -> list[TargetRow]:
    """Every target row, in the issues' order."""
    return [
        _size_row(result),
        _drop_row(result),
        _latency_row(result),
        _best_row(result),
        *_fewshot_rows(result),
        *_fit_rows(result),
        *_enrol_rows(result),
        TargetRow(
            "7",
            "runtime installs and runs without torch",
            "not run here",
            "passes",
            None,
            f"packaging test: pytest {PACKAGING_TEST} (fresh venv, no torch, full device cycle)",
        ),
    ]


def _size_row(result: dict[str, Any]) -> TargetRow:
    size = result["size"]
    return TargetRow(
        "1",
        "int8 member size / fp32",
        f"{size['ratio']:.3f} ({size['int8_bytes'] / 1e6:.2f} / {size['fp32_bytes'] / 1e6:.2f} MB)",
        f"<= {SIZE_RATIO_MAX:.2f}",
        size["ratio"] <= SIZE_RATIO_MAX,
        f"manifest member sizes of the {result['config']['fewshot_pooling']} bundle "
        "(backbone.int8.onnx vs backbone.fp32.onnx)",
    )


def _drop_row(result: dict[str, Any]) -> TargetRow:
    drops = result["int8_drop"]
    worst = max(d["drop_points"] for d in drops.values())
    value = ", ".join(f"{head} {d['drop_points']:+.2f}" for head, d in drops.items())
    shots = next(iter(drops.values()))["shots"]
    return TargetRow(
        "2",
        f"int8 accuracy drop, {shots}-shot (points)",
        value,
        f"<= {INT8_DROP_MAX} for each head",
        worst <= INT8_DROP_MAX,
        f"fp32 − int8 accuracy on the target-4 test images, paired per seed, mean of "
        f"{len(next(iter(drops.values()))['per_seed'])} seed(s); judged on the worse of auto and sklearn LR",
    )


def _latency_goal(result: dict[str, Any]) -> tuple[str, float]:
    family = str(((result.get("environment") or {}).get("cpu") or {}).get("family", "unknown"))
    return family, LATENCY_RATIO_MAX.get(family, LATENCY_RATIO_DEFAULT)


def _latency_row(result: dict[str, Any]) -> TargetRow:
    lat = result["latency"]
    one = lat["threads_1"]
    others = [
        f"{v['ratio_p50']:.3f} at {k.removeprefix('threads_')} threads" for k, v in lat.items() if k != "threads_1"
    ]
    value = f"{one['ratio_p50']:.3f} (int8 {one['int8']['p50_ms']:.2f} / fp32 {one['fp32']['p50_ms']:.2f} ms)"
    family, goal = _latency_goal(result)
    return TargetRow(
        "3",
        f"int8 / fp32 batch-1 p50 latency, 1 thread ({family}, int8 kernel {one.get('int8_kernel')})",
        "; ".join([value, *others]),
        f"<= {goal}",
        one["ratio_p50"] <= goal,
        f"{one['backend']} via the runtime's backend selection, calls alternating fp32/int8, "
        f"{one['fp32']['runs']} timed calls each after {one['fp32']['warmup']} warm-up",
    )


def _best_row(result: dict[str, Any]) -> TargetRow:
    """``precision="best"`` must never pick a precision that measured slower than fp32."""
    verdicts, values = [], []
    for key, group in result["latency"].items():
        best = group.get("best") or {}
        chosen = best.get("precision", "?")
        ok = chosen == "fp32" or (chosen == "int8" and group["ratio_p50"] < 1.0)
        verdicts.append(ok)
        values.append(f"{chosen} at {key.removeprefix('threads_')} threads")
    return TargetRow(
        "3b",
        "precision='best' is never slower than fp32",
        "; ".join(values),
        "chosen p50 < fp32 p50",
        bool(verdicts) and all(verdicts),
        "what a device asking for the best precision chose in a fresh load-time measurement, judged against "
        "the interleaved latency above",
    )


def _fewshot_rows(result: dict[str, Any]) -> list[TargetRow]:
    summary = result["fewshot"]["summary"]
    cfg = result["config"]
    rows = []
    for shots in cfg["shots"]:
        fp32, int8 = (summary[f"{p}/auto"][f"K={shots}"] for p in ("fp32", "int8"))
        floor = FEWSHOT_MIN.get(shots)
        passed = None if floor is None else min(fp32, int8) >= floor
        rows.append(
            TargetRow(
                f"4 K={shots}",
                f"few-shot accuracy, auto head, K={shots} (%)",
                f"fp32 {fp32:.1f}, int8 {int8:.1f}",
                "reported" if floor is None else f">= {floor:g} (fp32 and int8)",
                passed,
                f"{cfg['fewshot_pooling']} bundle at {cfg['image_size']} px, {cfg['seeds']} seed(s), "
                f"{cfg['test_count']} test images",
            )
        )
    return rows


def _fit_rows(result: dict[str, Any]) -> list[TargetRow]:
    fit = result["fit"]
    base_ms, base_acc = fit["timing"]["sklearn_lr"]["p50_ms"], fit["accuracy"]["sklearn_lr"]
    rows = []
    for head, speedup in fit["speedup"].items():
        if head in fit.get("variant_of", {}):  # fit-only / with-rejection timings are reported, not judged
            continue
        acc = fit["accuracy"][head]
        rows.append(
            TargetRow(
                f"5 {head}",
                f"{head} fit (ready for predict_proba) vs sklearn LR, 10x{fit['samples'] // 10}, "
                f"D={fit['feature_dim']}",
                f"{speedup:.0f}x ({fit['timing'][head]['p50_ms']:.2f} vs {base_ms:.1f} ms); "
                f"acc {acc:.1f} vs {base_acc:.1f}",
                f">= {FIT_SPEEDUP_MIN:g}x and acc >= sklearn",
                speedup >= FIT_SPEEDUP_MIN and acc >= base_acc,
                "median fit time, interleaved round-robin, 1 BLAS thread; accuracy mean over seeds on the test images",
            )
        )
    return rows


def _enrol_rows(result: dict[str, Any]) -> list[TargetRow]:
    rows = []
    for where, label in (("memory", "in-memory state"), ("sqlite", "SQLite state file")):
        stats = result["enrol"][f"auto/{where}"]
        rows.append(
            TargetRow(
                f"6 {where}",
                f"add 1 sample to {stats['state_size']} (incremental partial_fit; auto chose "
                f"{stats.get('head_in_use', '?')}, D={stats.get('feature_dim', '?')}), {label}",
                f"{stats['p50_ms']:.2f} ms p50 (p90 {stats['p90_ms']:.2f}, "
                f"mean {stats.get('mean_ms', float('nan')):.2f})",
                f"<= {ENROL_MS_MAX:g} ms",
                stats["p50_ms"] <= ENROL_MS_MAX,
                f"Learner.add with features cached, {stats['runs']} timed adds",
            )
        )
    return rows


def table_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows for the terminal table."""
    rows = [TargetRow(**r) for r in result["targets"]]
    return ["id", "target", "measured", "goal", "status"], [[r.id, r.name, r.value, r.target, r.status] for r in rows]
