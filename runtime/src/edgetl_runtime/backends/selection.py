"""Choose the backend, precision and int8 kernel on the device that runs them, by measurement.

The exporting host is rarely the device. So on load every precision the device may use is checked
against the bundle's golden outputs; int8 on x86 gets the kernel that is exact on this CPU (fast
where fast is exact, exact only where the flags or the golden check show saturation); and
``precision="best"`` is the fastest verified precision in a short, bounded timing at batch 1. The
outcome is cached per bundle digest, CPU identity, thread count and onnxruntime version, so a second
load only re-checks the winner. :class:`Selection` says what was chosen and why.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from edgetl_runtime.backends.base import BACKENDS, Backend, check_against_golden
from edgetl_runtime.backends.choice_cache import ChoiceCache, choice_key
from edgetl_runtime.backends.cpu import CpuFamily, CpuInfo, this_cpu
from edgetl_runtime.backends.int8_targets import int8_mismatch, int8_targets, needs_exact_kernel
from edgetl_runtime.backends.onnxruntime import Int8Kernel, OrtBackend
from edgetl_runtime.backends.tensorrt_choice import tensorrt_backend, tensorrt_usable
from edgetl_runtime.bundle.manifest import Precision
from edgetl_runtime.bundle.reader import Bundle, requested_precision
from edgetl_runtime.errors import BackendError, ConfigError
from edgetl_runtime.warn import warn

# A reduced precision must beat fp32 by this margin to be chosen: on a tie, exact arithmetic wins.
MIN_SPEEDUP = 1.05
TIMING_BUDGET_S = 1.5  # the whole load-time timing, all candidates together
TIMING_ROUNDS = (5, 40)  # at least / at most this many interleaved rounds
# Part of the cache key: a change to how the choice is made must not reuse choices made the old way.
SELECTION_POLICY = f"v2 speedup>={MIN_SPEEDUP} rounds={TIMING_ROUNDS} close-calls-timed-twice"
# A timing this near the MIN_SPEEDUP line cannot tell the options apart yet: it is timed again before deciding.
CLOSE_CALL = (MIN_SPEEDUP / 1.05, MIN_SPEEDUP * 1.05)


@dataclass(frozen=True)
class Candidate:
    """One precision (and int8 kernel) tried on this device."""

    precision: str
    kernel: str | None
    passed: bool
    golden_min_cosine: float | None
    p50_ms: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Selection:
    """What a load chose, from which candidates, and why (``Learner.info()``, ``edgetl-device info``)."""

    backend: str
    precision: str
    kernel: str | None
    reason: str
    cpu: str
    cpu_family: str
    threads: int | None
    candidates: tuple[Candidate, ...] = ()
    measured: bool = False
    from_cache: bool = False
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["candidates"] = [asdict(c) for c in self.candidates]
        out["warnings"] = list(self.warnings)
        return out


def create_backend(
    bundle: Bundle,
    backend: str = "auto",
    precision: str | Precision = "best",
    threads: int | None = None,
    verify: bool = True,
    measure: bool = True,
) -> Backend:
    """Pick and build a backend (see :func:`select_backend`); returns only the backend."""
    return select_backend(bundle, backend, precision, threads, verify, measure)[0]


def select_backend(
    bundle: Bundle,
    backend: str = "auto",
    precision: str | Precision = "best",
    threads: int | None = None,
    verify: bool = True,
    measure: bool = True,
    cache: ChoiceCache | None = None,
    cpu: CpuInfo | None = None,
    keep: Precision | tuple[Precision, ...] | None = None,
) -> tuple[Backend, Selection]:
    """Build the backend for this device and say why it was chosen.

    ``auto`` prefers TensorRT when a GPU and tensorrt are present; any TensorRT failure then gives
    way to onnxruntime with a warning (``tensorrt`` by name raises instead). On onnxruntime, an
    explicit precision is built with the right int8 kernel and golden-checked; ``best`` times every
    verified precision (unless ``measure=False``: then int8 when its member was built for this CPU
    family, else fp32) and keeps the fastest, a reduced precision only when it beats fp32 by
    :data:`MIN_SPEEDUP`. ``keep`` (under ``best``) is the precision, or the precisions, to stay with while
    they pass their golden check: those an existing enrolment state's features were computed with; of
    several, the fastest.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"Unknown backend {backend!r}; choose one of {list(BACKENDS)}.")
    requested_precision(precision)  # an unknown precision is a BundleError before anything is built
    cpu = cpu or this_cpu()
    if backend == "tensorrt" or (backend == "auto" and tensorrt_usable()):
        try:
            built = tensorrt_backend(bundle, precision, verify)
            reason = "TensorRT engine built for this GPU and checked against the golden features"
            return built, Selection(
                built.name, built.precision.value, None, reason, cpu.describe(), cpu.family.value, threads
            )
        except Exception as exc:  # any TensorRT/CUDA failure: the CPU path below still serves the device
            if backend == "tensorrt":
                raise
            warn(f"TensorRT is not usable for this bundle, using onnxruntime: {type(exc).__name__}: {exc}")
    return _OrtChooser(bundle, threads, verify, cpu).choose(precision, measure, cache or ChoiceCache(), keep)


class _OrtChooser:
    """The onnxruntime half of :func:`select_backend`: builds, verifies, times and caches candidates."""

    def __init__(self, bundle: Bundle, threads: int | None, verify: bool, cpu: CpuInfo) -> None:
        self.bundle, self.threads, self.verify, self.cpu = bundle, threads, verify, cpu
        self.notes: list[str] = []
        self._samples: dict[Precision, list[float]] = {}  # batch-1 call times of each precision, seconds
        q = bundle.manifest.quantization
        mismatch = int8_mismatch(q, cpu) if Precision.INT8 in bundle.manifest.precisions else None
        if mismatch:
            self.notes.append(mismatch)

    def selection(self, built: OrtBackend, reason: str, **kw: Any) -> Selection:
        kernel = built.kernel.value if built.precision is Precision.INT8 else None
        cpu = self.cpu
        return Selection(
            built.name,
            built.precision.value,
            kernel,
            reason,
            cpu.describe(),
            cpu.family.value,
            self.threads,
            warnings=tuple(self.notes),
            **kw,
        )

    def choose(
        self,
        precision: str | Precision,
        measure: bool,
        cache: ChoiceCache,
        keep: Precision | tuple[Precision, ...] | None = None,
    ) -> tuple[Backend, Selection]:
        asked = requested_precision(precision)
        if asked is Precision.INT8:
            self.warn_notes()
        if asked is not None:
            self.bundle.manifest.model_member(asked)  # raises naming what the bundle ships
            built, tried = self.build(asked)
            if built is None:
                raise BackendError(_golden_failure(asked, tried))
            return built, self.selection(built, f"{asked.value} was asked for; {_passed(tried)}", candidates=tried)
        kept = tuple(
            p for p in ((keep,) if isinstance(keep, Precision) else keep or ()) if p in self.bundle.manifest.precisions
        )
        if len(kept) == 1:
            built, tried = self.build(kept[0])
            if built is not None:
                reason = f"kept {kept[0].value}: the enrolment state's cached features were computed with it"
                return built, self.selection(built, reason, candidates=tried)
        chosen = self.static_best() if not measure or not self.verify else self.cached_or_measured(cache)
        if len(kept) > 1:
            chosen = self.fastest_of(kept, chosen)
        if chosen[1].measured and chosen[1].from_cache and chosen[1].precision != Precision.INT8.value:
            return chosen  # decided before, without int8: its notes were shown then (they stay in .warnings)
        self.warn_notes()
        return chosen

    def fastest_of(self, kept: tuple[Precision, ...], chosen: tuple[Backend, Selection]) -> tuple[Backend, Selection]:
        """Of the precisions the state has every feature for, ``best``'s choice if it is one, else the fastest
        of them as ``best`` timed them (untimed: the first)."""
        names = ", ".join(p.value for p in kept)
        selection = chosen[1]
        if Precision(selection.precision) in kept:
            return chosen[0], replace(selection, reason=f"{selection.reason}; the state has features for {names}")
        timed = sorted(
            (c.p50_ms, Precision(c.precision))
            for c in selection.candidates
            if c.passed and c.p50_ms is not None and Precision(c.precision) in kept
        )
        for precision in [p for _, p in timed] + [p for p in kept if p not in {q for _, q in timed}]:
            built, tried = self.build(precision)
            if built is not None:
                why = f"kept {precision.value}: the fastest of the precisions the state has features for ({names})"
                return built, self.selection(built, why, candidates=(*selection.candidates, *tried))
        return chosen

    def warn_notes(self) -> None:
        """Say why the int8 member is known to be slow or inexact on this CPU (once per load)."""
        for note in dict.fromkeys(self.notes):
            warn(note)

    def cached_or_measured(self, cache: ChoiceCache) -> tuple[OrtBackend, Selection]:
        key = self.cache_key()
        cached = cache.get(key, self.cpu.identity)
        if cached is not None:
            hit = self.from_cache(cached)
            if hit is not None:
                return hit
            warn("The cached backend choice no longer passes its golden check here; measuring again.")
        built, selection = self.measured_best()
        cache.put(key, {"cpu_identity": self.cpu.identity, **selection.to_dict()})
        return built, selection

    # ------------------------------------------------------------------ building and checking

    def kernels(self) -> tuple[Int8Kernel, ...]:
        """int8 kernels to try, in order: exact first only where the CPU's flags predict saturation."""
        if not self.cpu.is_x86:
            return (Int8Kernel.FAST,)  # the option exists on x86 only
        if self.cpu.family is CpuFamily.OTHER:
            return (Int8Kernel.FAST, Int8Kernel.EXACT)  # x86 flags unknown: the golden check decides
        if needs_exact_kernel(self.bundle.manifest.quantization, self.cpu):
            return (Int8Kernel.EXACT,)  # the fast kernel would saturate: no point proving it
        return (Int8Kernel.FAST, Int8Kernel.EXACT)

    def build(self, precision: Precision) -> tuple[OrtBackend | None, tuple[Candidate, ...]]:
        """The first kernel of ``precision`` that reproduces the host's golden features, and every try."""
        tried: list[Candidate] = []
        for kernel in self.kernels() if precision is Precision.INT8 else (Int8Kernel.EXACT,):
            built = OrtBackend.from_bundle(self.bundle, precision, self.threads, kernel=kernel)
            label = kernel.value if precision is Precision.INT8 else None
            if not self.verify:
                return built, (*tried, Candidate(precision.value, label, True, None, note="not verified"))
            report = check_against_golden(built, self.bundle)
            tried.append(Candidate(precision.value, label, report.passed, report.min_cosine))
            if report.passed:
                return built, tuple(tried)
        return None, tuple(tried)

    def verified(self) -> tuple[dict[Precision, OrtBackend], list[Candidate]]:
        built: dict[Precision, OrtBackend] = {}
        tried: list[Candidate] = []
        for precision in self.bundle.manifest.precisions:
            backend, attempts = self.build(precision)
            tried += attempts
            if backend is not None:
                built[precision] = backend
            else:
                self.notes.append(_golden_failure(precision, attempts) + "; using another precision")
        if Precision.FP32 not in built:
            raise BackendError(_golden_failure(Precision.FP32, tuple(tried)))
        return built, tried

    # ------------------------------------------------------------------ choosing

    def static_best(self) -> tuple[Backend, Selection]:
        """No timing: int8 when its member was built for this CPU family, else fp32 (CPU fp16 is rarely faster)."""
        q = self.bundle.manifest.quantization
        int8_fits = Precision.INT8 in self.bundle.manifest.precisions and self.cpu.family.value in int8_targets(q)
        for precision in (Precision.INT8, Precision.FP32) if int8_fits else (Precision.FP32,):
            built, tried = self.build(precision)
            if built is not None:
                why = "int8 is built for this CPU family" if precision is Precision.INT8 else "fp32 is exact"
                return built, self.selection(built, f"not measured (measure=False): {why}", candidates=tried)
            self.notes.append(_golden_failure(precision, tried))
        raise BackendError(self.notes[-1])

    def measured_best(self) -> tuple[OrtBackend, Selection]:
        built, tried = self.verified()
        times = self.time(built)
        again = _close_call(times)
        if again:  # too near the line to choose on: measure as long again (the samples add up)
            times = self.time(built)
        tried = [replace(c, p50_ms=times[Precision(c.precision)]) if c.passed else c for c in tried]
        fp32 = times[Precision.FP32]
        order = sorted(built, key=lambda p: times[p])
        winner = next((p for p in order if p is Precision.FP32 or times[p] * MIN_SPEEDUP <= fp32), Precision.FP32)
        timing = ", ".join(f"{p.value} {times[p]:.2f} ms" for p in order)
        reason = f"fastest verified precision at batch 1 ({timing})"
        if winner is Precision.FP32 and order[0] is not Precision.FP32:
            ratio = fp32 / times[order[0]]
            reason += (
                f"; {order[0].value} is {ratio:.3f}x fp32's speed, not the {MIN_SPEEDUP:.2f}x a reduced precision must "
                "beat: within noise they tie, and on a tie exact fp32 is kept"
            )
        if again:
            reason += "; the first timing was too close to call, so it was timed twice as long"
        return built[winner], self.selection(built[winner], reason, candidates=tuple(tried), measured=True)

    def time(self, built: dict[Precision, OrtBackend]) -> dict[Precision, float]:
        """Batch-1 p50 of each backend, calls interleaved, within :data:`TIMING_BUDGET_S`."""
        image = np.ascontiguousarray(self.bundle.golden()["inputs"][:1], dtype=np.float32)
        for backend in built.values():
            backend.run(image)  # warm-up
        samples = self._samples = {p: self._samples.get(p, []) for p in built}  # a second call adds to the first
        start = time.perf_counter()
        low, high = TIMING_ROUNDS
        for round_index in range(high):
            for precision, backend in built.items():
                t0 = time.perf_counter()
                backend.run(image)
                samples[precision].append(time.perf_counter() - t0)
            if round_index + 1 >= low and time.perf_counter() - start > TIMING_BUDGET_S:
                break
        return {p: float(np.median(s)) * 1e3 for p, s in samples.items()}

    # ------------------------------------------------------------------ cache

    def cache_key(self) -> str:
        m = self.bundle.manifest
        digests = [m.members[p.member].sha256 for p in m.precisions]
        return choice_key(digests, self.cpu.identity, self.threads, f"{_ort_version()}|{SELECTION_POLICY}")

    def from_cache(self, entry: dict[str, Any]) -> tuple[OrtBackend, Selection] | None:
        try:
            precision = Precision(entry["precision"])
            kernel = Int8Kernel(entry.get("kernel") or Int8Kernel.EXACT.value)
            candidates = tuple(Candidate(**c) for c in entry.get("candidates", []))
            reason = str(entry["reason"])
        except (KeyError, TypeError, ValueError):
            return None
        if precision not in self.bundle.manifest.precisions:
            return None
        if precision is Precision.INT8 and kernel not in self.kernels():
            return None  # a kernel this CPU's flags rule out (an edited or foreign entry): measure again
        built = OrtBackend.from_bundle(self.bundle, precision, self.threads, kernel=kernel)
        if not check_against_golden(built, self.bundle).passed:
            return None
        selection = self.selection(built, reason, candidates=candidates, measured=True, from_cache=True)
        return built, selection


def _passed(tried: tuple[Candidate, ...]) -> str:
    last = tried[-1]
    kernel = f" with the {last.kernel} int8 kernel" if last.kernel else ""
    if last.golden_min_cosine is None:
        return f"built{kernel} (not verified)"
    return f"golden check passed{kernel} (min cosine {last.golden_min_cosine:.5f})"


def _golden_failure(precision: Precision, tried: tuple[Candidate, ...]) -> str:
    attempts = ", ".join(
        f"{c.kernel or 'default'} kernel: min cosine {c.golden_min_cosine:.5f}"
        for c in tried
        if c.precision == precision.value and c.golden_min_cosine is not None
    )
    return (
        f"The bundle's {precision.value} model disagrees with the host's golden features on this device ({attempts}): "
        "this CPU computes a different model. Use another precision, or re-export the bundle (an int8 model from "
        "an edgetl older than its exact-int8 sessions, with 8-bit weights, must be re-exported)"
    )


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def _close_call(times: dict[Precision, float]) -> bool:
    """Whether the fastest reduced precision is so near :data:`MIN_SPEEDUP` x fp32 that noise could decide."""
    reduced = [t for p, t in times.items() if p is not Precision.FP32]
    if not reduced or Precision.FP32 not in times or min(reduced) <= 0:
        return False
    low, high = CLOSE_CALL
    return low <= times[Precision.FP32] / min(reduced) <= high
