"""Which bundle x precision options can be compared here: each bundle opened and hash-verified, each precision
built with the backend and int8 kernel this device would choose, and golden-checked. What fails is named."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl_runtime.backends.base import Backend
from edgetl_runtime.backends.selection import select_backend
from edgetl_runtime.bundle import Bundle
from edgetl_runtime.bundle.manifest import Precision
from edgetl_runtime.compare.config import CompareConfig
from edgetl_runtime.errors import EdgeTLError
from edgetl_runtime.preprocess import PreprocessSpec


@dataclass(frozen=True)
class Problem:
    """A bundle, option or measurement left out of the comparison, and why (shown in the report)."""

    subject: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"subject": self.subject, "reason": self.reason}


@dataclass(eq=False)
class Option:
    """One bundle at one precision, loaded and verified the way this device would run it."""

    name: str  # "<bundle stem>:<precision>", unique in a comparison
    path: Path
    backbone: str  # the timm architecture
    input_size: int
    precision: str
    backend_name: str
    kernel: str | None  # the int8 kernel chosen here (None: not int8)
    golden_min_cosine: float | None
    chosen_because: str
    load_ms: float  # open + verify the bundle, build the backend, golden check (this process)
    bundle_bytes: int  # the .edgetl file
    model_bytes: int  # this precision's ONNX member
    feature_dim: int
    spec: PreprocessSpec = field(repr=False)
    backend: Backend = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        skip = {"spec", "backend", "path"}
        return {"path": str(self.path), **{k: v for k, v in vars(self).items() if k not in skip}}


def discover(paths: Sequence[str | Path], config: CompareConfig) -> tuple[list[Option], list[Problem]]:
    """Every comparable option of ``paths``, and a :class:`Problem` for each bundle or precision that is not."""
    options: list[Option] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for path in _bundle_files(paths):
        if str(path.resolve()) in seen:
            problems.append(Problem(str(path), "given twice; compared once"))
            continue
        seen.add(str(path.resolve()))
        start = time.perf_counter()
        try:
            bundle = Bundle.open(path)
        except EdgeTLError as exc:
            problems.append(Problem(str(path), f"fails verification: {_one_line(exc)}"))
            continue
        open_ms = (time.perf_counter() - start) * 1e3
        stem = _unique(path.stem, options)
        for precision in _wanted(bundle, config, problems):
            option = _load(bundle, precision, open_ms, stem, config, problems)
            if option is not None:
                options.append(option)
    return options, problems


def _bundle_files(paths: Sequence[str | Path]) -> list[Path]:
    """The paths as given, a folder replaced by the ``*.edgetl`` files in it (sorted)."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        out += sorted(path.glob("*.edgetl")) if path.is_dir() else [path]
    return out


def _wanted(bundle: Bundle, config: CompareConfig, problems: list[Problem]) -> list[Precision]:
    shipped = list(bundle.manifest.precisions)
    if config.precisions is None:
        return shipped
    wanted = [Precision(p) for p in config.precisions]
    missing = [p.value for p in wanted if p not in shipped]
    if missing and len(missing) == len(wanted):
        problems.append(
            Problem(str(bundle.path), f"ships {[p.value for p in shipped]}, none of the precisions asked for {missing}")
        )
    return [p for p in shipped if p in wanted]


def _load(
    bundle: Bundle, precision: Precision, open_ms: float, stem: str, config: CompareConfig, problems: list[Problem]
) -> Option | None:
    """Build and golden-check ``precision`` as the device would (explicit precision: no timing at load)."""
    name = f"{stem}:{precision.value}"
    start = time.perf_counter()
    try:
        backend, selection = select_backend(
            bundle, config.backend, precision, threads=config.threads, verify=True, measure=False
        )
    except EdgeTLError as exc:
        problems.append(Problem(name, f"fails its golden check or cannot run here: {_one_line(exc)}"))
        return None
    load_ms = open_ms + (time.perf_counter() - start) * 1e3
    golden = [c.golden_min_cosine for c in selection.candidates if c.passed]
    manifest = bundle.manifest
    return Option(
        name=name,
        path=bundle.path,
        backbone=manifest.backbone.timm_name,
        input_size=int(manifest.preprocess.input_size[0]),
        precision=precision.value,
        backend_name=backend.name,
        kernel=selection.kernel,
        golden_min_cosine=golden[-1] if golden else None,
        chosen_because=selection.reason,
        load_ms=load_ms,
        bundle_bytes=bundle.path.stat().st_size,
        model_bytes=len(bundle.model_bytes(precision)),
        feature_dim=manifest.backbone.feature_dim,
        spec=manifest.preprocess,
        backend=backend,
    )


def _unique(stem: str, options: list[Option]) -> str:
    """Two bundles with one file name (from different folders) get ``name~2``."""
    taken = {o.name.rsplit(":", 1)[0] for o in options}
    if stem not in taken:
        return stem
    return next(f"{stem}~{i}" for i in range(2, len(taken) + 3) if f"{stem}~{i}" not in taken)


def _one_line(exc: Exception) -> str:
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
