"""Turn a demo result into ``report.md``, PNG plots and a short terminal table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgetl.demo.config import DemoResult


def write_report(result: DemoResult, out: Path) -> Path:
    plot = _plot_few_shot(result, out / "few_shot.png")
    lines = [
        "# edgetl demo report",
        "",
        f"Backbone `{result.config.backbone}` ({result.config.weights} weights) at {result.config.image_size} px. "
        f"Host fine-tuned on Fashion-MNIST classes {list(result.config.source_classes)}; the device learns classes "
        f"{list(result.config.target_classes)} from K shots, never seen on the host. Regenerate: `make demo`.",
        "",
        "## Few-shot accuracy on unseen target classes (device Learner, onnxruntime CPU)",
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
        _export_table(result.exports),
        "",
        "## Latency (batch-1 p50, ms)",
        "",
        _latency_lines(result.latency),
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
    print("\n" + _few_shot_table(result) + f"\n\nreport: {path}")
    return path


def _machine_lines(machine: dict[str, Any]) -> list[str]:
    """The CPU these figures come from, and what ``precision="best"`` chose on it for each bundle."""
    lines = [f"CPU: {machine.get('cpu_line', 'not recorded')}."]
    for name, sel in (machine.get("best") or {}).items():
        kernel = f", int8 kernel {sel['kernel']}" if sel.get("kernel") else ""
        lines.append(f"- `{name}`: best = {sel['precision']}{kernel}: {sel['reason']}")
    return lines


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
        f"strategy `{ft.get('strategy')}`, {ft.get('train_size')} images, {len(ft.get('train_loss', []))} epochs, "
        f"val acc {100 * (ft.get('val_accuracy') or 0):.1f} %, test acc {100 * (ft.get('test_accuracy') or 0):.1f} %, "
        f"{ft.get('wall_time_s', 0):.0f} s"
    )


def _export_table(exports: dict[str, Any]) -> str:
    rows = ["| bundle | fp32 MB | int8 MB | int8/fp32 | int8 check |", "|---|---|---|---|---|"]
    for name, info in exports.items():
        sizes = info["member_bytes"]
        fp32, int8 = sizes.get("backbone.fp32.onnx", 0), sizes.get("backbone.int8.onnx", 0)
        check = info["checks"].get("backbone.int8.onnx", {})
        keys = ("accuracy_fp32", "accuracy_int8", "accuracy_delta", "cosine_mean", "excluded_nodes")
        summary = {k: round(check[k], 3) if isinstance(check.get(k), float) else check.get(k) for k in keys}
        if "int8_refused" in info:
            summary = {"refused by the accuracy guard": info["int8_refused"][:160]}
        rows.append(f"| {name} | {fp32 / 1e6:.2f} | {int8 / 1e6:.2f} | {int8 / max(fp32, 1):.2f} | {summary} |")
    return "\n".join(rows)


def _latency_lines(latency: dict[str, Any]) -> str:
    cells = latency.get("cells", [])
    lines = [
        f"- {c.get('backend')} {c.get('precision')} batch {c.get('batch')} threads {c.get('threads')}: "
        f"p50 {c.get('p50_ms', float('nan')):.2f}, p99 {c.get('p99_ms', float('nan')):.2f}"
        for c in cells
        if c.get("p50_ms") is not None
    ]
    return "\n".join(lines) or "(no latency cells)"


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
