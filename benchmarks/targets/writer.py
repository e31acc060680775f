"""Write a judged ``run_targets`` result: ``targets.json``, ``targets.csv``, ``report.md`` and two PNGs.

Every file is written atomically (temp file + rename), so an interrupted run never leaves half a report.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edgetl_runtime.atomic import atomic_write

from .judge import FEWSHOT_MIN, PACKAGING_TEST, TargetRow

CSV_COLUMNS = ("id", "name", "value", "target", "status", "method")


def write_report(result: dict[str, Any], output_dir: Path) -> dict[str, Path]:
    """``targets.json``, ``targets.csv``, ``fewshot.png``, ``latency.png`` and ``report.md``, each atomically."""
    rows = [TargetRow(**r) for r in result["targets"]]
    paths = {
        kind: output_dir / name
        for kind, name in (
            ("json", "targets.json"),
            ("csv", "targets.csv"),
            ("fewshot_png", "fewshot.png"),
            ("latency_png", "latency.png"),
            ("markdown", "report.md"),
        )
    }
    _write_bytes(paths["csv"], _csv(rows).encode())
    _write_plot(paths["fewshot_png"], partial(plot_fewshot, result=result))
    _write_plot(paths["latency_png"], partial(plot_latency, result=result))
    _write_bytes(paths["markdown"], markdown(result, rows, paths).encode())
    files = {kind: str(path) for kind, path in paths.items()}
    _write_bytes(paths["json"], json.dumps({**result, "files": files}, indent=2, default=str).encode())
    return paths


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_write(path) as fh:
        fh.write(data)


def _csv(rows: list[TargetRow]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({**asdict(row), "status": row.status} for row in rows)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------- plots


def _write_plot(path: Path, draw: Callable[[Any], None]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    draw(ax)
    fig.tight_layout()
    with atomic_write(path) as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)


def plot_fewshot(ax: Any, result: dict[str, Any]) -> None:
    """Accuracy vs K for auto / sklearn LR / SimpleShot, fp32 solid, int8 dashed and hollow; targets as red crosses."""
    summary = result["fewshot"]["summary"]
    for color, head in enumerate(("auto", "sklearn_lr", "simpleshot")):
        for precision, style, face in (("fp32", "-", f"C{color}"), ("int8", "--", "none")):
            by_k = summary.get(f"{precision}/{head}", {})
            ks = [int(k.split("=")[1]) for k in by_k]
            line = {"linestyle": style, "color": f"C{color}", "markerfacecolor": face, "label": f"{precision}/{head}"}
            ax.plot(ks, list(by_k.values()), marker="o", **line)
    targets = [(k, v) for k, v in FEWSHOT_MIN.items() if k in result["config"]["shots"]]
    ax.scatter(
        [k for k, _ in targets], [v for _, v in targets], marker="x", s=80, color="red", zorder=5, label="target (auto)"
    )
    cfg = result["config"]
    ax.set(
        xscale="log",
        xlabel="shots per class (K)",
        ylabel="test accuracy (%)",
        title=f"Fashion-MNIST few-shot, {cfg['model']} {cfg['image_size']} px "
        f"{cfg['fewshot_pooling']}, {cfg['seeds']} seed(s)",
    )
    ax.set_xticks(cfg["shots"], [str(k) for k in cfg["shots"]])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_latency(ax: Any, result: dict[str, Any]) -> None:
    """Batch-1 p50 per precision and thread count, p90 as the whisker."""
    groups = list(result["latency"].items())
    width = 0.38
    for i, precision in enumerate(("fp32", "int8")):
        xs = np.arange(len(groups)) + (i - 0.5) * width
        p50 = [g[precision]["p50_ms"] for _, g in groups]
        whisker = [[0.0] * len(groups), [g[precision]["p90_ms"] - g[precision]["p50_ms"] for _, g in groups]]
        ax.bar(xs, p50, width, yerr=whisker, capsize=3, label=precision)
    labels = [f"{k.removeprefix('threads_')} thread(s)\nint8/fp32 {g['ratio_p50']:.2f}" for k, g in groups]
    ax.set_xticks(range(len(groups)), labels)
    cfg = result["config"]
    title = f"{cfg['model']} {cfg['image_size']} px, onnxruntime CPU, fp32/int8 calls alternating"
    ax.set(ylabel="batch-1 latency, ms (bar p50, whisker p90)", title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()


# ---------------------------------------------------------------------------------------- markdown


def markdown(result: dict[str, Any], rows: list[TargetRow], paths: dict[str, Path]) -> str:
    """The summary table, then one section per target with its detail and the command that reruns it."""
    env = result["environment"]
    cpu = env["cpu"]
    isa = ", ".join(flag for flag, present in cpu["isa"].items() if present) or "none of interest"
    lines = [
        "# edgetl targets report",
        "",
        f"One run of `{result['command']}` ({result['seconds']['total']:.0f} s). CPU: {cpu['model']}, "
        f"{cpu['logical_cores']} logical cores, ISA: {isa}, VNNI: {'yes' if cpu['vnni'] else 'no'}. "
        f"Load average {_loads(env['load_average_start'])} at start, {_loads(env['load_average_end'])} at end.",
        "",
    ]
    if result["config"]["mode"] == "quick":
        lines += [QUICK_NOTE, ""]
    lines += ["| # | target | measured | goal | status |", "|---|---|---|---|---|"]
    lines += [f"| {r.id} | {r.name} | {r.value} | {r.target} | **{r.status}** |" for r in rows]
    rerun = f"Rerun: `{result['command']}`."
    sections = (_size_section, _drop_section, _latency_section, _fewshot_section, _fit_section, _enrol_section)
    for section in sections:
        lines += ["", *section(result, paths), "", rerun]
    lines += ["", *_packaging_section(), "", *_environment_section(env)]
    return "\n".join(lines) + "\n"


QUICK_NOTE = (
    "**Quick smoke run** (small images, one seed, few test images and timed calls): the figures exercise the "
    "pipeline and are not comparable with the targets."
)
QUANT_KEYS = ("quant_format", "activation_type", "weight_type", "per_channel", "reduce_range", "calibrate_method")


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _loads(values: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def _size_section(result: dict[str, Any], paths: dict[str, Path]) -> list[str]:
    size = result["size"]
    quant = ", ".join(f"{k}={size['quantization'].get(k)}" for k in QUANT_KEYS)
    return [
        "## 1. int8 size",
        "",
        f"backbone.fp32.onnx {size['fp32_bytes']:,} B, backbone.int8.onnx {size['int8_bytes']:,} B "
        f"(ratio {size['ratio']:.3f}), bundle `{result['bundles']['fewshot']}`. Quantization: {quant}; "
        f"calibration: {size.get('calibration', {})} (every argument is in targets.json and the manifest).",
    ]


def _drop_section(result: dict[str, Any], paths: dict[str, Path]) -> list[str]:
    drops = [
        f"- {head}: mean {d['drop_points']:+.2f} points; per seed {', '.join(f'{v:+.2f}' for v in d['per_seed'])}"
        for head, d in result["int8_drop"].items()
    ]
    return [
        "## 2. int8 accuracy cost (fp32 − int8, points; positive = int8 worse)",
        "",
        *drops,
        "",
        "Same episodes and test images as target 4, so each seed's difference is paired.",
    ]


def _latency_section(result: dict[str, Any], paths: dict[str, Path]) -> list[str]:
    lines = [
        "## 3. int8 latency (batch 1, onnxruntime CPU through the runtime's create_backend)",
        "",
        "| threads | precision | p50 ms | p90 ms | p99 ms | mean ms | runs | int8/fp32 p50 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, group in result["latency"].items():
        for precision in ("fp32", "int8"):
            s = group[precision]
            lines.append(
                f"| {key.removeprefix('threads_')} | {precision} | {s['p50_ms']:.2f} | {s['p90_ms']:.2f} | "
                f"{s['p99_ms']:.2f} | {s['mean_ms']:.2f} | {s['runs']} | {group['ratio_p50']:.3f} |"
            )
    note = "fp32 and int8 calls alternate on one real preprocessed test image; only the 1-thread ratio is judged."
    return [*lines, "", note, "", f"![latency]({paths['latency_png'].name})", *_conv_profile_lines(result)]


def _conv_profile_lines(result: dict[str, Any]) -> list[str]:
    """The per-kind convolution times behind the ratio (see ``op_profile``)."""
    profile = result.get("conv_profile") or {}
    if "by_kind" not in profile:
        return ["", f"Convolution profile unavailable: {profile.get('error', 'not measured')}."]
    lines = [
        "",
        f"Where the time goes (onnxruntime profiler, 1 thread, median of {profile['runs']} calls per kernel):",
        "",
        "| convolutions | count | fp32 ms | int8 ms | int8/fp32 |",
        "|---|---|---|---|---|",
    ]
    for kind, k in {**profile["by_kind"], "all": {"count": len(profile["convs"]), **profile["total"]}}.items():
        times = [f"{k['fp32_ms']:.2f}", f"{k['int8_ms']:.2f}", f"{k['ratio']:.2f}"]
        lines.append(_md_row([kind, str(k["count"]), *times]))
    cpu = (result.get("environment") or {}).get("cpu") or {}
    lines += ["", *_floor_prose(profile, cpu)]
    return lines


def _floor_prose(profile: dict[str, Any], cpu: dict[str, Any]) -> list[str]:
    """What limits the int8 ratio on the CPU that was measured: its family and the kernel mode used."""
    family = cpu.get("family", "unknown")
    kernel = profile.get("int8_kernel", "exact")
    lines = [
        f"Measured on {cpu.get('model', 'an unknown CPU')} ({family}; VNNI: {'yes' if cpu.get('vnni') else 'no'}), "
        f"int8 under onnxruntime's {kernel} x86 kernel, the one the runtime chose here."
    ]
    by_kind, total = profile["by_kind"], profile["total"]
    slow = [k for k, v in by_kind.items() if v["ratio"] >= 1.0]
    if slow:
        lines.append(f"int8 is not faster than fp32 for the {', '.join(slow)} convolutions on this CPU.")
    pointwise = by_kind.get("pointwise")
    if pointwise and family == "x86-avx2":
        share = pointwise["fp32_ms"] / total["fp32_ms"]
        lines.append(
            f"Pointwise convolutions are {100 * share:.0f} % of the fp32 convolution time. Without VNNI, AVX2's "
            "u8 x s8 multiply-add (vpmaddubsw) does at most twice the fp32 FMA's multiply-accumulates per "
            "instruction, so with every other kernel as fast as fp32 the convolutions' ratio could not drop below "
            f"about {1 - share / 2:.2f} here (an estimate from kernel times; what runs between kernels is not "
            "counted). CPUs with VNNI or ARM dot products move that floor."
        )
    elif pointwise:
        lines.append(
            f"Pointwise convolutions run at {pointwise['ratio']:.2f}x fp32 and all convolutions at "
            f"{total['ratio']:.2f}x: this CPU's int8 dot products (VNNI / ARM) are exact under the fast kernel."
        )
    return lines


def _fewshot_section(result: dict[str, Any], paths: dict[str, Path]) -> list[str]:
    cfg, summary, shots = result["config"], result["fewshot"]["summary"], result["config"]["shots"]
    table = [_md_row(["precision / head", *(f"K={k}" for k in shots)]), "|---" * (len(shots) + 1) + "|"]
    table += [_md_row([key, *(f"{by_k[f'K={k}']:.1f}" for k in shots)]) for key, by_k in summary.items()]
    table.append(_md_row(["target (auto)", *(str(FEWSHOT_MIN.get(k, "-")) for k in shots)]))
    return [
        "## 4. Few-shot accuracy (%)",
        "",
        f"Pool: {cfg['pool_per_class']} train images per class (fixed seed); K shots per class per seed via "
        f"`episode()`, {cfg['seeds']} seed(s); test: the first {cfg['test_count']} t10k images; "
        f"{result['fewshot']['feature_dim']}-d features of the {cfg['fewshot_pooling']} bundle "
        "(crop_pct=1.0; the pooling was chosen "
        "on train-only validation by `benchmarks/select_pooling.py`) through the runtime. "
        "sklearn = LogisticRegression(max_iter=1000); SimpleShot = CL2N nearest class mean.",
        "",
        *table,
        "",
        f"![few-shot]({paths['fewshot_png'].name})",
    ]


def _fit_section(result: dict[str, Any], paths: dict[str, Path]) -> list[str]:
    fit, cfg = result["fit"], result["config"]
    rows = [
        f"| {h} | {t['p50_ms']:.3f} | {t['p90_ms']:.3f} | {t['runs']} | {fit['speedup'].get(h, 1.0):.1f}x | "
        f"{_accuracy_of(fit, h)} |"
        for h, t in fit["timing"].items()
    ]
    return [
        "## 5. Head fit time",
        "",
        f"10 classes x {fit['samples'] // 10} shots, D = {fit['feature_dim']} (avg-pooled fp32 bundle "
        f"`{result['bundles']['avg']}`). {cfg['fit_rounds']} rounds of: 1 sklearn fit, then {cfg['fit_calls']} "
        "fits of each edgetl head; medians compared; BLAS limited to 1 thread. Accuracy: mean over seeds on the "
        "target-4 test images. `ridge` / `auto`: fit plus the predict_proba temperature, which `ridge` "
        "otherwise chooses on first use (sklearn's fit yields probabilities too; this row is judged); "
        "`_fit_only`: `fit()` alone; `_with_rejection`: also the unknown-rejection threshold, which sklearn "
        "has no counterpart for.",
        "",
        "| fit | p50 ms | p90 ms | timed fits | speed-up | accuracy % |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


def _accuracy_of(fit: dict[str, Any], name: str) -> str:
    """Accuracy of a timing row; the variants of a head share the head's predictions."""
    base = fit.get("variant_of", {}).get(name, name)
    return f"{fit['accuracy'][base]:.2f}" if base in fit["accuracy"] else "-"


def _enrol_section(result: dict[str, Any], paths: dict[str, Path]) -> list[str]:
    rows = [
        f"| {k} | {v.get('head_in_use', '-')} | {v['p50_ms']:.3f} | {v['p90_ms']:.3f} | "
        f"{v.get('mean_ms', float('nan')):.3f} | {v['runs']} |"
        for k, v in result["enrol"].items()
    ]
    return [
        "## 6. Enrolment: add one sample, update the head",
        "",
        "`Learner.add` updates a fitted head incrementally (`partial_fit`): alpha, temperature and `auto`'s "
        "choice stay as the last full `fit()` left them. The mean includes the periodic fold of the ridge "
        "head's low-rank inverse terms (every 32 adds).",
        "",
        "| head / state | head in use | p50 ms | p90 ms | mean ms | timed adds |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "`Learner.add` on the avg bundle with every image's features already cached (no backbone run while "
        "timed), BLAS limited to 1 thread. `python benchmarks/bench_enrol.py BUNDLE` measures the same with the "
        "features computed by the backbone first.",
    ]


def _packaging_section() -> list[str]:
    return [
        "## 7. Runtime without torch",
        "",
        f"Not run by this command: `.venv/bin/pytest {PACKAGING_TEST}` installs edgetl-runtime into a fresh "
        "venv without torch and runs a full enrol / fit / predict cycle on a real bundle.",
    ]


def _environment_section(env: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    return [
        "## Environment",
        "",
        f"- platform: {env['platform']}, Python {env['python']}",
        f"- versions: {versions}",
        f"- threads: `{json.dumps(env['threads'])}`",
    ]
