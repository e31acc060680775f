"""The demo as a list of named steps: fine-tune on source classes, export with the fine-tuned head, predict out
of the box on a device, extend it with new classes, merge two devices' enrolments, measure, report."""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Any

from edgetl.backbones import create_backbone
from edgetl.datasets import ImageDataset, balanced_subset, load_fashion_mnist
from edgetl.demo.config import DemoConfig, DemoResult
from edgetl.demo.device import few_shot_curve
from edgetl.demo.story import run_story
from edgetl.export import BundleConfig, export_bundle
from edgetl.finetune import FinetuneConfig, finetune
from edgetl_runtime.errors import QuantizationError


class _Steps:
    """Times each named step into ``result.timings_s`` and prints progress."""

    def __init__(self, result: DemoResult) -> None:
        self.result = result

    def __call__(self, name: str) -> _Steps:
        self.name, self.start = name, time.perf_counter()
        print(f"[demo] {name} ...", flush=True)
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        seconds = time.perf_counter() - self.start
        self.result.timings_s[self.name] = round(seconds, 2)
        print(f"[demo] {self.name}: {seconds:.1f} s", flush=True)


def run_demo(config: DemoConfig | None = None) -> DemoResult:
    """Run every step and write ``report.md``, ``results.json`` and plots under ``config.output``."""
    from edgetl.demo.report import write_report

    config = config or DemoConfig()
    out = config.output
    out.mkdir(parents=True, exist_ok=True)
    result = DemoResult(config)
    step = _Steps(result)
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    source = balanced_subset(train.select_classes(config.source_classes), config.finetune_per_class, seed=0)
    source_test = balanced_subset(test.select_classes(config.source_classes), config.test_per_class, seed=0)
    with step("fine-tune on source classes"):
        result.finetune = _finetune(config, source, source_test, out / "finetuned")
    bundles = {}
    calib = balanced_subset(train.select_classes(config.source_classes), 200, seed=1)  # host data only
    for name, model in (("imagenet", config.backbone), ("finetuned", out / "finetuned")):
        head = source if name == "finetuned" else None  # the fine-tuned bundle ships its head, fitted on the source
        with step(f"export {name} bundle"):
            bundles[name], result.exports[name] = _export(config, model, calib, out / f"{name}.edgetl", head)
    result.machine = _machine(bundles, config.threads)
    target_pool = balanced_subset(train.select_classes(config.target_classes), config.pool_per_class, seed=2)
    target_test = balanced_subset(test.select_classes(config.target_classes), config.test_per_class, seed=0)
    for name, path in bundles.items():
        for precision in result.exports[name]["precisions"]:
            with step(f"device few-shot: {name} {precision}"):
                result.few_shot += few_shot_curve(
                    path, precision, target_pool, target_test, config.shots, config.seeds, config.threads
                )
    story_precision = "int8" if "int8" in result.exports["finetuned"]["precisions"] else "fp32"
    with step(f"devices: out of the box, extended, merged ({story_precision})"):
        result.story = run_story(bundles["finetuned"], story_precision, source_test, target_pool, target_test,
                                 config.story_shots, config.threads, out)  # fmt: skip
    with step("latency benchmark"):
        result.latency = _latency(config, bundles["finetuned"], out)
    (out / "results.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    write_report(result, out)
    return result


def _machine(bundles: dict[str, Path], threads: int | None) -> dict[str, Any]:
    """This CPU and, per bundle, the precision and int8 kernel a device asking for ``best`` gets here."""
    import tempfile

    from edgetl_runtime.backends import select_backend
    from edgetl_runtime.backends.choice_cache import ChoiceCache
    from edgetl_runtime.backends.cpu import this_cpu
    from edgetl_runtime.bundle.reader import Bundle

    choices = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in bundles.items():
            _, sel = select_backend(Bundle.open(path), "onnxruntime", "best", threads, cache=ChoiceCache(Path(tmp)))
            choices[name] = sel.to_dict()
    return {"cpu": this_cpu().to_dict(), "cpu_line": this_cpu().describe(), "best": choices}


def _finetune(config: DemoConfig, source: ImageDataset, source_test: ImageDataset, run_dir: Path) -> dict[str, Any]:
    backbone = create_backbone(config.backbone, config.weights, image_size=config.image_size)
    backbone.spec = dataclasses.replace(backbone.spec, crop_pct=config.crop_pct)  # trained as the device will see
    ft_config = FinetuneConfig.partial(
        freeze_stages=config.freeze_stages,
        epochs=config.finetune_epochs,
        lr=config.finetune_lr,
        freeze_bn=True,  # keep ImageNet normalisation statistics: better transfer, and int8 ranges stay sane
        batch_size=32,
        patience=None,
        progress=True,
    )
    outcome = finetune(backbone, source, None, source_test, ft_config, run_dir)
    return {k: v for k, v in outcome.to_dict().items() if k not in {"confusion"}}


def _export(
    config: DemoConfig, model: str | Path, calib: ImageDataset, path: Path, head: ImageDataset | None = None
) -> tuple[Path, dict[str, Any]]:
    """fp32 + int8; when the int8 accuracy guard refuses, ship fp32 alone and say why (never a bad int8)."""
    try:
        return _export_with(config, model, calib, path, ("fp32", "int8"), head)
    except QuantizationError as exc:
        print(f"[demo] int8 refused by the accuracy guard, shipping fp32 only: {exc}", flush=True)
        bundle_path, info = _export_with(config, model, calib, path, ("fp32",), head)
        return bundle_path, {**info, "int8_refused": str(exc)}


def _export_with(
    config: DemoConfig,
    model: str | Path,
    calib: ImageDataset,
    path: Path,
    precisions: tuple[str, ...],
    head: ImageDataset | None = None,
) -> tuple[Path, dict[str, Any]]:
    import torch

    bundle_config = BundleConfig(
        precisions=precisions,  # type: ignore[arg-type]
        calibration_count=config.calibration_count,
        eval_count=config.eval_count,
        crop_pct=config.crop_pct,
    )
    with warnings.catch_warnings():  # the tracer's notes on shape arithmetic are for exporter authors, not users
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
        result = export_bundle(
            model,
            path,
            weights=config.weights,
            data=calib,
            data_source="fashion-mnist:train[source]",
            config=bundle_config,
            image_size=config.image_size,
            head_data=head,
            head_source=None if head is None else "fashion-mnist:train[source] (the fine-tuning images)",
        )
    sizes = {name: info.size for name, info in result.bundle.manifest.members.items()}
    manifest = result.bundle.manifest
    return path, {"path": str(path), "precisions": list(precisions), "member_bytes": sizes, "checks": result.report,
                  "head": dict(manifest.head), "quantization": dict(manifest.quantization)}  # fmt: skip


def _latency(config: DemoConfig, bundle: Path, out: Path) -> dict[str, Any]:
    from edgetl.bench.latency_config import LatencyBenchConfig
    from edgetl.bench.latency_table import run_latency_bench

    bench = LatencyBenchConfig(
        batch_sizes=(1, 8),
        threads=(config.threads,),
        runs=config.latency_runs,
        max_seconds=config.latency_max_seconds,
        probe=config.latency_probe,
        output_dir=out / "latency",
    )
    return run_latency_bench(bundle, bench).to_dict()
