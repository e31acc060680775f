"""Turn a demo result into ``report.md``, PNG plots and a short terminal table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.wording import cosine_text, drop_points, drop_text

if TYPE_CHECKING:
    from edgetl.demo.config import DemoResult


def write_report(result: DemoResult, out: Path) -> Path:
    plot = _plot_few_shot(result, out / "few_shot.png")
    story_plot = _plot_story(result, out / "story.png") if result.story else None
    lines = [
        "# edgetl demo report",
        "",
        f"Backbone `{result.config.backbone}` ({result.config.weights} weights) at {result.config.image_size} px. "
        f"The host fine-tunes on Fashion-MNIST classes {list(result.config.source_classes)} and ships its head; "
        f"devices learn classes {list(result.config.target_classes)} (never seen on the host) from K shots. "
        "Regenerate: `make demo`.",
        "",
        *_story_lines(result, story_plot),
        "## Few-shot accuracy on the new classes alone (device Learner, onnxruntime CPU)",
        "",
        "Mean ± standard deviation over the seeds (episodes) of each K; 5-way, new classes only, the shipped head "
        "left out (the `imagenet` bundle has none).",
        "",
        _few_shot_table(result),
        "",
        f"![few-shot accuracy]({plot.name})",
        "",
        "## Host fine-tuning (source classes)",
        "",
        _finetune_lines(result.finetune),
        "",
        "## Bundles",
        "",
        "Accuracy drops are `fp32 - int8` in points: positive means int8 is worse.",
        "",
        _export_table(result.exports),
        "",
        *_latency_lines(result.latency, result.exports),
        "",
        "## Machine",
        "",
        *_machine_lines(result.machine),
        "",
        "## Step timings (s)",
        "",
        *[f"- {name}: {seconds:.1f}" for name, seconds in result.timings_s.items()],
        f"- total: {sum(result.timings_s.values()):.1f}",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    print("\n" + "\n".join(_story_lines(result, None)) + _few_shot_table(result) + f"\n\nreport: {path}")
    return path


def _story_lines(result: DemoResult, plot: Path | None) -> list[str]:
    """The mission's three numbers: out of the box, extended (old classes kept), merged."""
    story = result.story
    if story is None:
        return []
    new = ", ".join(f"{d}: {', '.join(c)}" for d, c in story.halves.items())
    rows = [
        ("out of the box: the shipped head, nothing enrolled", "host classes", story.out_of_box),
        (f"after enrolling {story.shots} shots of each new class", "host classes (kept)", story.extended_old),
        ("", "new classes", story.extended_new),
        ("", "all classes", story.extended_all),
        (f"a third device on `merged.edgetl` ({new})", "all classes", story.merged_all),
    ]
    merge = story.merge_report
    lines = [
        f"## The mission on simulated devices (`{story.bundle}`, {story.precision})",
        "",
        "| device | test set | accuracy |",
        "|---|---|---|",
        *[f"| {step} | {what} | {score.percent() if score else 'n/a'} |" for step, what, score in rows],
        "",
        f"Fleet merge: {merge.get('samples_merged')} of {merge.get('samples_in')} device samples from "
        f"{', '.join(merge.get('files', []))} folded into the shipped head (new classes: "
        f"{', '.join(merge.get('new_classes') or []) or 'none'}); the third device enrolled nothing itself.",
        "",
    ]
    if plot is not None:
        lines += [f"![the mission]({plot.name})", ""]
    return lines


def _machine_lines(machine: dict[str, Any]) -> list[str]:
    """The CPU these figures come from, and what ``precision="best"`` chose on it for each bundle."""
    lines = [f"CPU: {machine.get('cpu_line', 'not recorded')}."]
    for name, sel in (machine.get("best") or {}).items():
        kernel = f", int8 kernel {sel['kernel']}" if sel.get("kernel") else ""
        lines.append(f"- `{name}`: best = {sel['precision']}{kernel}: {sel['reason']}")
        timed = sorted((c["p50_ms"], c["precision"]) for c in sel.get("candidates", []) if c.get("p50_ms"))
        if len(timed) > 1 and timed[1][0] < timed[0][0] * (1 + SEPARABLE):
            lines.append(
                f"  - note: {timed[0][1]} {timed[0][0]:.2f} ms vs {timed[1][1]} {timed[1][0]:.2f} ms differ by less "
                f"than {SEPARABLE:.0%}: these timings cannot separate the two; the choice is not a speed claim."
            )
    return lines


SEPARABLE = 0.05  # two p50s closer than this are within the run-to-run noise of a shared 2-core machine


def _few_shot_table(result: DemoResult) -> str:
    shots = sorted({c.shots for c in result.few_shot})
    rows = [
        "| backbone | precision | " + " | ".join(f"K={k}" for k in shots) + " | enrol+fit ms | backbone re-runs |",
        "|---|---|" + "---|" * len(shots) + "---|---|",
    ]
    for bundle, precision in dict.fromkeys((c.bundle, c.precision) for c in result.few_shot):
        cells = {c.shots: c for c in result.few_shot if (c.bundle, c.precision) == (bundle, precision)}
        accs = " | ".join(f"{100 * cells[k].accuracy_mean:.1f} ± {100 * cells[k].accuracy_std:.1f}" for k in shots)
        enrol = max(c.enrol_ms for c in cells.values())
        reruns = sum(c.backbone_runs for c in cells.values())
        rows.append(f"| {bundle} | {precision} | {accs} | {enrol:.1f} | {reruns} |")
    return "\n".join(rows)


def _finetune_lines(ft: dict[str, Any]) -> str:
    if not ft:
        return "(skipped)"
    return (
        f"strategy `{ft.get('strategy')}`, {ft.get('train_size')} images, {len(ft.get('train_loss', []))} epochs "
        f"(best: epoch {ft.get('best_epoch')}), val acc {100 * (ft.get('val_accuracy') or 0):.1f} %, "
        f"test acc {100 * (ft.get('test_accuracy') or 0):.1f} %, {ft.get('wall_time_s', 0):.0f} s"
    )


def _int8_check(info: dict[str, Any]) -> str:
    if "int8_refused" in info:
        return "refused by the accuracy guard: " + " ".join(str(info["int8_refused"]).split())[:160]
    check = info["checks"].get("backbone.int8.onnx") or {}
    parts = []
    drop = drop_points(check)
    if drop is not None:
        parts.append(f"probe {check['accuracy_fp32']:.1f} -> {check['accuracy_int8']:.1f} %, {drop_text(drop)}")
    parts += cosine_text(check)
    if "excluded_nodes" in check:
        parts.append(f"{len(check['excluded_nodes'])} node(s) kept in float")
    return "; ".join(parts) or "n/a"


def _export_table(exports: dict[str, Any]) -> str:
    rows = ["| bundle | fp32 MB | int8 MB | int8/fp32 | int8 check | shipped head |", "|---|---|---|---|---|---|"]
    for name, info in exports.items():
        sizes = info["member_bytes"]
        fp32, int8 = sizes.get("backbone.fp32.onnx", 0), sizes.get("backbone.int8.onnx", 0)
        head = info.get("head") or {}
        measured = (head.get("accuracy") or {}).get("by_precision") or {}
        head_text = (
            f"{len(head.get('labels', []))} classes; host accuracy "
            + ", ".join(f"{p} {100 * v:.1f} %" for p, v in measured.items())
            + f" on {(head.get('accuracy') or {}).get('images')} held-out images"
            if head
            else "none"
        )
        rows.append(
            f"| {name} | {fp32 / 1e6:.2f} | {int8 / 1e6:.2f} | {int8 / max(fp32, 1):.2f} | {_int8_check(info)} "
            f"| {head_text} |"
        )
    return "\n".join(rows)


NOISE_P99_OVER_P50 = 2.0  # a tail this long means the machine was busy: the figures are not the model's
NOISE_P50_OVER_MIN = 1.5


def latency_noise(cell: dict[str, Any]) -> str:
    """Why a latency cell's figures are noise-dominated, or "" when they are not."""
    p50, p99, low = (float(cell.get(k) or float("nan")) for k in ("p50_ms", "p99_ms", "min_ms"))
    why = []
    if p99 > NOISE_P99_OVER_P50 * p50:
        why.append(f"p99 {p99 / p50:.1f}x p50")
    if p50 > NOISE_P50_OVER_MIN * low:
        why.append(f"p50 {p50 / low:.1f}x min")
    return "noisy: " + ", ".join(why) + " (a busy machine; rerun when idle)" if why else ""


def _latency_lines(latency: dict[str, Any], exports: dict[str, Any]) -> list[str]:
    cells = [c for c in latency.get("cells", []) if c.get("p50_ms") is not None]
    timed = Path(str(exports.get("finetuned", {}).get("path", "the bundle"))).name
    lines = [
        f"## Latency of `{timed}` (ms per call, {latency.get('image_size')} px)",
        "",
        "| backend | precision | batch | threads | p50 | p99 | min | runs | ms/image | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        lines.append(
            f"| {c.get('backend')} | {c.get('precision')} | {c.get('batch')} | {c.get('threads')} | "
            f"{c['p50_ms']:.2f} | {c['p99_ms']:.2f} | {c['min_ms']:.2f} | {c.get('runs')} | "
            f"{c['ms_per_image']:.2f} | {latency_noise(c)} |"
        )
    return lines if cells else ["## Latency", "", "(no latency cells)"]


def _plot_story(result: DemoResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    story = result.story
    assert story is not None
    bars = {
        "out of the box\n(host classes)": story.out_of_box,
        "extended\n(host classes)": story.extended_old,
        "extended\n(new classes)": story.extended_new,
        "extended\n(all 10)": story.extended_all,
        "merged, 3rd device\n(all 10)": story.merged_all,
    }
    fig, ax = plt.subplots(figsize=(7, 3.8))
    values = [100 * s.accuracy if s else 0.0 for s in bars.values()]
    drawn = ax.bar(list(bars), values, color=["#4c72b0", "#4c72b0", "#dd8452", "#55a868", "#8172b2"])
    ax.bar_label(drawn, fmt="%.1f")
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Devices on {story.bundle} ({story.precision}, K={story.shots} per new class)")
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_few_shot(result: DemoResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for bundle, precision in dict.fromkeys((c.bundle, c.precision) for c in result.few_shot):
        cells = sorted(
            (c for c in result.few_shot if (c.bundle, c.precision) == (bundle, precision)), key=lambda c: c.shots
        )
        ax.errorbar(
            [c.shots for c in cells],
            [100 * c.accuracy_mean for c in cells],
            yerr=[100 * c.accuracy_std for c in cells],
            marker="o",
            capsize=3,
            linestyle="-" if precision == "fp32" else "--",
            label=f"{bundle} {precision}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("shots per class (K)")
    ax.set_ylabel("accuracy on unseen classes (%)")
    ax.set_title("Device few-shot accuracy on classes unseen by the host")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
