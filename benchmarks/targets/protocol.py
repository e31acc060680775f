"""What the targets run measures: the protocol's constants and its one configuration, ``TargetsConfig``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgetl_runtime.errors import ConfigError, raise_all

POOL_SEED = 1234  # the enrolment pool of `edgetl bench fewshot`: same images, comparable figures
N_CLASSES = 10  # Fashion-MNIST
FIT_HEADS = ("ridge", "auto")
DROP_HEADS = ("auto", "sklearn_lr")
DROP_SHOTS = 5
ENROL_HEADS = ("auto", "ridge", "ncm")
EXTRA_VERSIONS = ("scikit-learn", "onnxslim", "threadpoolctl")


@dataclass(frozen=True)
class TargetsConfig:
    """What the targets run measures; the defaults are the targets' own protocol."""

    model: str = "tf_efficientnet_lite0"
    weights: str = "bundled"
    image_size: int = 224
    shots: tuple[int, ...] = (1, 5, 10, 20)
    seeds: int = 5
    pool_per_class: int = 100
    test_count: int = 2000  # the first N Fashion-MNIST t10k images
    # Chosen by validation inside the train split (benchmarks/select_pooling.py), never on the test set.
    fewshot_pooling: str = "grid3"
    threads: int | None = None  # onnxruntime intra-op threads: features + the second latency row (None: its default)
    calibration_count: int = 300  # int8 export, as `edgetl export` does by default
    eval_count: int = 600
    latency_runs: int = 200  # timed calls per precision, alternating fp32 / int8
    latency_warmup: int = 20
    fit_shots: int = 5
    fit_rounds: int = 40  # round-robin: one sklearn fit, then fit_calls of each edgetl head
    fit_calls: int = 25
    enrol_state_size: int = 500
    enrol_runs: int = 100
    enrol_warmup: int = 5
    output_dir: Path = field(default_factory=lambda: Path("runs/targets"))
    mode: str = "full"  # "quick": a smoke run whose figures are not comparable with the targets
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        object.__setattr__(self, "shots", tuple(int(k) for k in self.shots))
        problems = []
        if self.image_size < 32 or self.image_size % 32:
            problems.append(f"image_size {self.image_size} must be a positive multiple of 32 (EfficientNet strides)")
        if DROP_SHOTS not in self.shots:
            problems.append(f"shots {self.shots} must include {DROP_SHOTS}: target 2 reads the {DROP_SHOTS}-shot runs")
        if max(self.shots, default=0) > self.pool_per_class or min(self.shots, default=0) < 1:
            problems.append(f"shots {self.shots} must lie in 1..pool_per_class ({self.pool_per_class})")
        enrol_needs = self.enrol_state_size + self.enrol_warmup + self.enrol_runs
        if enrol_needs > N_CLASSES * self.pool_per_class:
            problems.append(
                f"enrolment needs {enrol_needs} pool images, the pool holds {N_CLASSES * self.pool_per_class}"
            )
        if not 1 <= self.test_count <= 10_000:
            problems.append(f"test_count {self.test_count} must lie in 1..10000 (Fashion-MNIST t10k)")
        counts = ("seeds", "latency_runs", "fit_rounds", "fit_calls", "enrol_runs", "calibration_count", "eval_count")
        problems += [f"{name} must be >= 1, got {getattr(self, name)}" for name in counts if getattr(self, name) < 1]
        if self.mode not in {"full", "quick"}:
            problems.append(f"mode {self.mode!r} must be 'full' or 'quick'")
        if self.threads is not None and self.threads < 1:
            problems.append(f"threads must be >= 1 or None (onnxruntime's default), got {self.threads}")
        raise_all(ConfigError, problems, "Invalid TargetsConfig")

    @classmethod
    def quick(cls, **overrides: Any) -> TargetsConfig:
        """A smoke run in about a minute: 96 px, 1 seed, K = 1, 5, 200 test images, few timed calls."""
        small = dict(
            image_size=96,
            shots=(1, 5),
            seeds=1,
            pool_per_class=10,
            test_count=200,
            calibration_count=50,
            eval_count=100,
            latency_runs=20,
            latency_warmup=3,
            fit_rounds=5,
            fit_calls=5,
            enrol_state_size=50,
            enrol_runs=20,
            enrol_warmup=3,
            mode="quick",
        )
        return cls(**{**small, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "output_dir": str(self.output_dir)}

    def command(self) -> str:
        """The command line that reruns exactly this configuration."""
        parts = ["python benchmarks/bench_targets.py"]
        if self.mode == "quick":
            parts.append("--quick")
        if self.image_size != (96 if self.mode == "quick" else 224):
            parts.append(f"--image-size {self.image_size}")
        if self.threads is not None:
            parts.append(f"--threads {self.threads}")
        return " ".join([*parts, f"--output-dir {self.output_dir}"])
