"""Accuracy-guarded int8: quantize, measure the task, and keep the most sensitive nodes in float.

The task is judged with the device's own ``auto`` head on paired few-shot episodes, with a bootstrap
interval (``judge``): nodes are kept in float only when the drop is both over ``max_drop``
and significant (its interval excludes 0), and a larger float set replaces a smaller one only when
it is significantly better. Without labels the guard judges feature agreement with fp32 instead.

When the guard fails, nodes are ranked by the damage they
do: how much the int8 model's error against the fp32 model (SQNR of each dequantized activation vs
the fp32 model's same tensor, via onnxruntime's ``qdq_loss_debug``) grows from a node's inputs to its
output. Growing sets of the worst ones are kept in float and the model re-quantized from cached
calibration ranges until the guard holds.

Why accumulated error and not each Q/DQ pair's local noise: the QDQ quantizer folds ReLU6 into the
producing convolution, so the "local" noise of such a tensor is mostly the intended clipping; and
the real failure mode is amplification. A backbone fine-tuned with BatchNorm statistics re-estimated
on a narrow domain (grayscale Fashion-MNIST) gets per-channel gains of 10x: its pre-activations span
about [-60, 60] while ReLU6 keeps [0, 6], so weight rounding of ~1 % of the pre-activation becomes
~10 % of the output. Every Q/DQ pair looks clean locally, yet the first layers cut the SQNR against
fp32 to 19 dB and the features to cosine 0.58. Ranked by local noise the guard kept 48 late nodes in
float; ranked by damage the stem and first blocks come first (5 nodes: cosine 0.90, 16: 0.98).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_exporters.quantization.config import QuantizeConfig
from edgetl_exporters.quantization.core import (
    ArrayCalibrationReader,
    QuantizeReport,
    check_calibration,
    model_input_shape,
    prepare_fp32,
    publish,
    quantize_prepared,
    workdir,
)
from edgetl_exporters.quantization.judge import Judge, Judgement
from edgetl_exporters.quantization.measure import interleaved_latency, run_features
from edgetl_runtime.backends.cpu import this_cpu
from edgetl_runtime.backends.int8_targets import needs_exact_kernel
from edgetl_runtime.backends.onnxruntime import Int8Kernel
from edgetl_runtime.errors import ConfigError, InputError, QuantizationError, raise_all

FloatArray = npt.NDArray[np.float32]
_ACTIVATIONS = ("Clip", "Relu")  # folded into their producer by the QDQ quantizer


def _sqnr(ref: Sequence[np.ndarray] | np.ndarray, test: Sequence[np.ndarray] | np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (higher is better)."""
    a = np.concatenate([np.ravel(x) for x in ([ref] if isinstance(ref, np.ndarray) else ref)]).astype(np.float64)
    b = np.concatenate([np.ravel(x) for x in ([test] if isinstance(test, np.ndarray) else test)]).astype(np.float64)
    signal, noise = max(float(np.linalg.norm(a)), 1e-12), max(float(np.linalg.norm(a - b)), 1e-12)
    return 20.0 * math.log10(signal / noise)


def accumulated_sqnr(prepared: Path, qdq: Path, probe: FloatArray, workspace: Path) -> dict[str, float]:
    """SQNR (dB) of every quantized activation of ``qdq`` against the fp32 model's same tensor.

    This is the error accumulated up to that tensor; graph inputs (no fp32 intermediate) are scored
    against their own pre-quantization values.
    """
    from onnxruntime.quantization import qdq_loss_debug as dbg

    q_aug, f_aug = workspace / "qdq_augmented.onnx", workspace / "fp32_augmented.onnx"
    dbg.modify_model_output_intermediate_tensors(str(qdq), str(q_aug), ["QuantizeLinear", "DequantizeLinear"])
    dbg.modify_model_output_intermediate_tensors(str(prepared), str(f_aug))
    name, _ = model_input_shape(prepared)
    q_acts = dbg.collect_activations(str(q_aug), ArrayCalibrationReader(name, probe, 4))
    f_acts = dbg.collect_activations(str(f_aug), ArrayCalibrationReader(name, probe, 4))
    matching = dbg.create_activation_matching(q_acts, f_acts)
    q_aug.unlink(missing_ok=True)
    f_aug.unlink(missing_ok=True)
    out = {}
    for tensor, m in matching.items():
        if "float" in m:
            out[tensor] = _sqnr(m["float"], m["post_qdq"])
        elif tensor == name:  # the image input: its only error is its own quantization
            out[tensor] = _sqnr(m["pre_qdq"], m["post_qdq"])
    return out


def rank_sensitive_nodes(prepared: Path, sqnr: dict[str, float], config: QuantizeConfig) -> list[list[str]]:
    """Quantizable nodes, most damaging first; each entry is the node plus a Clip/Relu fused into it.

    A node's damage is the SQNR of its worst activation input minus that of its output (after the
    fused activation), both against fp32 (:func:`accumulated_sqnr`).
    """
    import onnx

    graph = onnx.load(str(prepared), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    clean = max(sqnr.values(), default=0.0)  # an input with no measurement counts as the cleanest signal
    scored = []
    for node in graph.node:
        if node.op_type not in config.op_types or node.op_type in _ACTIVATIONS or node.name in config.nodes_to_exclude:
            continue
        acts = [c for c in consumers.get(node.output[0], []) if c.op_type in _ACTIVATIONS]
        outputs = [sqnr[t] for t in (*node.output, *(t for a in acts for t in a.output)) if t in sqnr]
        inputs = [sqnr.get(t, clean) for t in node.input if t and t not in weights]
        if outputs:
            damage = min(inputs, default=clean) - min(outputs)
            scored.append((-damage, [node.name, *(a.name for a in acts)]))
    scored.sort(key=lambda item: item[0])
    return [names for _, names in scored]


def _exclusion_sizes(n_candidates: int, max_excluded: int) -> list[int]:
    """1, 2, 4, ... capped at ``max_excluded`` (always tried last)."""
    cap = min(n_candidates, max_excluded)
    sizes = [k for k in (2**i for i in range(32)) if k < cap]
    return [*sizes, cap] if cap > 0 else []


def _attempt_record(excluded: list[str], judgement: Judgement, path: Path) -> dict[str, Any]:
    return {"excluded_nodes": list(excluded), **judgement.summary(), "int8_bytes": path.stat().st_size}


def _check_guard_args(max_drop: float, shots: int, episodes: int, max_excluded: int | None, min_cosine: float) -> None:
    problems = []
    if not math.isfinite(max_drop):
        problems.append(f"max_drop must be a finite number of accuracy points, got {max_drop}")
    if shots < 1 or episodes < 2:
        problems.append(f"shots ({shots}) must be >= 1 and episodes ({episodes}) >= 2")
    if max_excluded is not None and max_excluded < 0:
        problems.append(f"max_excluded must be >= 0, got {max_excluded}")
    if not 0.0 < min_cosine <= 1.0:
        problems.append(f"min_cosine must lie in (0, 1], got {min_cosine}")
    raise_all(ConfigError, problems, "Invalid accuracy-guard settings")


def check_eval_data(images: FloatArray, labels: npt.NDArray[Any], shots: int) -> None:
    """Every class needs more than ``shots`` samples, or the probe has no query images."""
    problems = []
    if images.ndim != 4 or len(images) != len(labels):
        problems.append(f"eval_images {images.shape} and eval_labels {np.shape(labels)} must be (N, 3, H, W) and (N,)")
    else:
        classes, counts = np.unique(labels, return_counts=True)
        if len(classes) < 2:
            problems.append(f"eval_labels hold {len(classes)} class; the probe needs at least 2")
        thin = [str(c) for c, n in zip(classes, counts, strict=True) if n <= shots]
        if thin:
            problems.append(f"classes {thin} have <= shots={shots} samples; give more eval images or lower shots")
    raise_all(InputError, problems, "Unusable evaluation data for the quantization guard")


# With labels, a few held-out images per class give a wide interval; features this far from fp32
# (a BN-retrained fine-tune reached 0.58 with a 4.6-point drop) fail whatever the probe shows.
LABELLED_COSINE_FLOOR = 0.8


@dataclass(frozen=True)
class GuardRule:
    """When int8 fails: labelled, a drop over ``max_drop`` that is significant, or a mean feature cosine
    significantly below :data:`LABELLED_COSINE_FLOOR`; unlabelled, one significantly below ``min_cosine``."""

    judge: Judge
    max_drop: float
    min_cosine: float

    def fails(self, judgement: Judgement) -> bool:
        agreement = self.judge.agreement(judgement).high
        if judgement.drop is not None:  # labelled: the task decides, but a model this far from fp32 is damaged
            significant_drop = judgement.drop.value > self.max_drop and judgement.drop.significant
            return significant_drop or agreement < LABELLED_COSINE_FLOOR
        return agreement < self.min_cosine

    def describe(self, judgement: Judgement) -> dict[str, Any]:
        out = {**self.judge.describe(), "passed": not self.fails(judgement)}
        if judgement.drop is not None:
            d = judgement.drop
            out.update(max_drop=self.max_drop, drop=d.value, interval=[d.low, d.high], confidence=d.confidence)
        else:
            a = self.judge.agreement(judgement)
            out.update(
                min_cosine=self.min_cosine, cosine_mean=a.value, interval=[a.low, a.high], confidence=a.confidence
            )
        return out


def quantize_guarded(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: FloatArray,
    eval_images: FloatArray,
    eval_labels: npt.NDArray[Any] | None,
    config: QuantizeConfig | None = None,
    max_drop: float = 1.0,
    source: str = "unspecified",
    shots: int = 5,
    episodes: int = 10,
    max_excluded: int | None = None,
    probe_images: int = 8,
    latency_runs: int = 50,
    min_cosine: float = 0.9,
) -> QuantizeReport:
    """int8 whose ``shots``-shot accuracy (device ``auto`` head) is not significantly over ``max_drop`` below fp32.

    Args:
        eval_images / eval_labels: held-out images (not the calibration ones), preprocessed; labels
            ``None`` for unlabelled data, judged by feature agreement (``min_cosine``) instead.
        max_drop: tolerated fp32 - int8 accuracy, in points, paired over ``episodes`` support draws.
        max_excluded: most node groups (a node with the Clip/Relu fused into it) kept in float before
            giving up; default half the quantizable ones.
        probe_images: eval images used to measure where the int8 error against fp32 grows.
        latency_runs: batch-1 timed runs (2 threads, interleaved fp32/int8) for the report; 0 skips.

    Raises:
        QuantizationError: the guard failed even with ``max_excluded`` nodes in float; its
            ``report`` attribute holds every attempt. Nothing is written to ``out_path``.
    """
    config = config or QuantizeConfig()
    _check_guard_args(max_drop, shots, episodes, max_excluded, min_cosine)
    _, shape = model_input_shape(fp32_path)
    calib = check_calibration(calibration, shape, config.num_calibration)
    check_calibration(eval_images, shape, len(eval_images))  # same shape/finite checks
    labels = None if eval_labels is None else np.asarray(eval_labels)
    if labels is not None:
        check_eval_data(eval_images, labels, shots)
    reference = run_features(fp32_path, eval_images)  # (N, D)
    rule = GuardRule(Judge(reference, labels, shots, episodes), max_drop, min_cosine)
    report = QuantizeReport(config.to_dict(), len(calib), source, Path(fp32_path).stat().st_size, 0)
    report.eval_count = len(eval_images)
    with workdir(out_path) as tmp:
        prepared = prepare_fp32(fp32_path, tmp / "prepared.onnx", config.optimize_first)
        cache = tmp / "calibration_ranges.json"

        def attempt(excluded: list[str]) -> tuple[Path, Judgement]:
            """Quantize with ``excluded`` in float and judge it against fp32."""
            tried = config.with_excluded(excluded)
            path, arguments = quantize_prepared(
                prepared, tmp / f"int8_{len(report.attempts)}.onnx", calib, tried, cache
            )
            judgement = rule.judge(run_features(path, eval_images))
            report.attempts.append(_attempt_record([*config.nodes_to_exclude, *excluded], judgement, path))
            attempts_args[path] = (tried, arguments)
            return path, judgement

        attempts_args: dict[Path, tuple[QuantizeConfig, dict[str, Any]]] = {}
        best, judged = attempt([])
        if rule.fails(judged):
            sqnr = accumulated_sqnr(prepared, best, eval_images[:probe_images], tmp)
            ranked = rank_sensitive_nodes(prepared, sqnr, config)
            limit = len(ranked) // 2 if max_excluded is None else max_excluded
            for k in _exclusion_sizes(len(ranked), limit):
                path, candidate = attempt([n for group in ranked[:k] for n in group])
                if not rule.fails(candidate):  # the smallest float set that passes ships
                    best, judged = path, candidate
                    break
                if rule.judge.improvement(candidate, judged).significant:  # a real step forward, not a lucky draw
                    best, judged = path, candidate
        shipped_config, report.ort_arguments = attempts_args[best]
        report.config = shipped_config.to_dict()
        _fill(report, judged, best, rule)
        if rule.fails(judged):
            err = QuantizationError(_guard_message(report, rule))
            err.report = report  # type: ignore[attr-defined]
            raise err
        if latency_runs > 0:
            # Timed under the int8 kernel a device like this host would choose (see the runtime's selection).
            exact = needs_exact_kernel(report.config, this_cpu())
            kernel = Int8Kernel.EXACT if exact else Int8Kernel.FAST
            models = {"fp32": prepared, "int8": best}
            lat = interleaved_latency(models, eval_images[:1], runs=latency_runs, kernel=kernel)
            report.latency_fp32_ms, report.latency_int8_ms = lat["fp32"].p50_ms, lat["int8"].p50_ms
        publish(best, out_path)
    return report


def _fill(report: QuantizeReport, judged: Judgement, path: Path, rule: GuardRule) -> None:
    report.excluded_nodes = list(report.config.get("nodes_to_exclude", []))
    report.int8_bytes = path.stat().st_size
    report.cosine_mean, report.cosine_min = judged.cosine_mean, judged.cosine_min
    report.guard = rule.describe(judged)
    if judged.drop is not None and judged.accuracy_fp32 is not None and judged.accuracy_quant is not None:
        report.accuracy_fp32, report.accuracy_int8 = judged.accuracy_fp32, judged.accuracy_quant
        report.accuracy_delta = -judged.drop.value


def _guard_message(report: QuantizeReport, rule: GuardRule) -> str:
    def one(a: dict[str, Any]) -> str:
        if "drop" in a:
            low, high = a["drop_interval"]
            return f"{len(a['excluded_nodes'])} in float -> drop {a['drop']:.2f} [{low:.2f}, {high:.2f}]"
        return f"{len(a['excluded_nodes'])} in float -> cosine {a['cosine_mean']:.4f}"

    limit = f"max_drop={rule.max_drop} points" if rule.judge.labelled else f"min_cosine={rule.min_cosine}"
    return (
        f"int8 stayed significantly beyond {limit} ({', '.join(one(a) for a in report.attempts)}). "
        "Fix: calibrate on more / more representative images, try --calib-method percentile or entropy, "
        "raise max_excluded or --max-drop, or ship fp16/fp32 instead."
    )
