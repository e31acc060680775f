"""``edgetl bench backbones``: export the candidate backbones x input sizes x precisions on the user's labelled
folder, then run the device's own comparison (``edgetl_runtime.compare``) on this machine.

The comparison is the runtime's, not a host copy of it: a user repeats exactly the same measurement on the
device with ``edgetl-device compare <output>/bundles/*.edgetl --data photos/``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl.backbones import STRIDE, resolve_name
from edgetl_runtime.arguments import to_precisions
from edgetl_runtime.compare import CompareConfig, Comparison, compare_bundles
from edgetl_runtime.errors import ConfigError, EdgeTLError, raise_all

LITES = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")


@dataclass(frozen=True)
class BackboneBenchConfig:
    """The candidates: every backbone at every size, each bundle shipping every precision.

    160 and 224 px are both multiples of 32 (TF 'same' padding exports exactly there) and bracket what a
    15 ms budget allows on a laptop-class CPU; the bundles use the export's defaults (few-shot pooling and crop,
    the int8 accuracy guard on the user's own images).
    """

    backbones: tuple[str, ...] = LITES
    sizes: tuple[int, ...] = (160, 224)
    precisions: tuple[str, ...] = ("fp32", "int8")
    weights: str = "bundled"
    compare: CompareConfig = field(default_factory=CompareConfig)

    def __post_init__(self) -> None:
        to_precisions(("fp32", *self.precisions), "export precision")  # raises naming a bad one
        problems = [f"size {s} is not a positive multiple of {STRIDE}" for s in self.sizes if s < STRIDE or s % STRIDE]
        if not self.backbones or not self.sizes:
            problems.append("give at least one backbone and one size")
        raise_all(ConfigError, problems, "Invalid BackboneBenchConfig")
        for name in self.backbones:
            resolve_name(name)  # an unknown name fails now, not after an hour of exports


@dataclass
class BackboneBenchResult:
    bundles: list[Path]
    export_seconds: float
    export_failures: dict[str, str]
    comparison: Comparison
    wall_s: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"bundles": [str(b) for b in self.bundles], "export_seconds": self.export_seconds,
                "export_failures": self.export_failures, "wall_s": self.wall_s, "notes": self.notes}  # fmt: skip


def run_backbone_bench(
    data: str | Path, output_dir: str | Path, config: BackboneBenchConfig | None = None, progress: bool = False
) -> BackboneBenchResult:
    """Export every candidate into ``output_dir/bundles`` (a failed export is named, the others go on), then
    compare them with :func:`edgetl_runtime.compare.compare_bundles`, writing the report into ``output_dir``.

    ``progress``: tqdm bars on stderr, one for the exports and one per comparison stage.
    """
    from tqdm import tqdm

    from edgetl.sources import load_data

    start = time.perf_counter()
    config = config or BackboneBenchConfig()
    output_dir = Path(output_dir)
    images = load_data(str(data))
    candidates = [(name, size) for name in config.backbones for size in config.sizes]
    bundles, failures, notes = [], {}, []
    for name, size in tqdm(candidates, desc="export", unit="bundle", disable=not progress):
        path = output_dir / "bundles" / f"{name.removeprefix('tf_efficientnet_')}_{size}.edgetl"
        try:
            notes += [f"{path.stem}: {note}" for note in _export(name, size, path, images, str(data), config)]
            bundles.append(path)
        except EdgeTLError as exc:
            failures[path.stem] = " ".join(str(exc).split())
    export_seconds = time.perf_counter() - start
    if not bundles:
        raise ConfigError("Every export failed: " + "; ".join(f"{k}: {v}" for k, v in failures.items()))
    comparison = compare_bundles(bundles, data, config.compare, output_dir, _stage_bars() if progress else None)
    notes += [f"export of {k} failed: {v}" for k, v in failures.items()]
    return BackboneBenchResult(bundles, export_seconds, failures, comparison, time.perf_counter() - start, notes)


def _export(name: str, size: int, path: Path, images: Any, source: str, config: BackboneBenchConfig) -> list[str]:
    """Export one candidate; returns the export's warnings (e.g. int8 left out by its accuracy guard)."""
    from edgetl.export import BundleConfig, export_bundle

    bundle_config = BundleConfig(precisions=to_precisions(("fp32", *config.precisions)), skip_failed=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_bundle(name, path, weights=config.weights, data=images, data_source=source, config=bundle_config,
                      image_size=size)  # fmt: skip
    own = (w for w in caught if w.category is UserWarning)  # edgetl's notes; not torch's tracer / deprecation noise
    return list(dict.fromkeys(" ".join(str(w.message).split()) for w in own))


def _stage_bars() -> Callable[[str, int, int], None]:
    """The comparison's (stage, done, total) progress as one tqdm bar per stage."""
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            bars[stage] = tqdm(total=total, desc=stage, unit="step")
        bars[stage].n = done
        bars[stage].refresh()
        if done >= total:
            bars[stage].close()

    return update
