"""Which CPU this is, in the terms that decide int8 speed and exactness.

A bundle is exported on one machine and run on another, so every int8 decision is taken from the
device's own CPU: its family (x86 with or without VNNI, ARM64), its model name and its ISA flags.
Reports print the same record, so a figure never travels without the machine that produced it.
"""

from __future__ import annotations

import hashlib
import os
import platform
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from edgetl_runtime.versions import distribution_version

# Flags that change which int8 / fp16 kernels onnxruntime's MLAS can use.
INTERESTING_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
    "fphp",
    "asimdhp",
)
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})


class CpuFamily(str, Enum):
    """CPU families an int8 member can be meant for (written in the manifest, checked on the device)."""

    X86_VNNI = "x86-vnni"  # u8 x s8 dot products exact in int32 (VPDPBUSD)
    X86_AVX2 = "x86-avx2"  # no VNNI: the fast u8 x s8 kernel adds pairs in int16 and saturates on 8-bit weights
    ARM64 = "arm64"
    OTHER = "other"


@dataclass(frozen=True)
class CpuInfo:
    """The device's CPU: what a kernel choice and a cached timing are keyed by."""

    model: str
    machine: str
    flags: frozenset[str]
    logical_cores: int

    @property
    def is_x86(self) -> bool:
        return self.machine.lower() in {"x86_64", "amd64", "i686", "x86"}

    @property
    def family(self) -> CpuFamily:
        """ARM64, x86 with or without VNNI, or OTHER (another architecture, or x86 whose flags are unknown)."""
        if self.machine.lower().startswith(("aarch64", "arm64")):
            return CpuFamily.ARM64
        if self.is_x86 and self.flags:
            return CpuFamily.X86_VNNI if self.flags & VNNI_FLAGS else CpuFamily.X86_AVX2
        return CpuFamily.OTHER

    @property
    def vnni(self) -> bool:
        return bool(self.flags & VNNI_FLAGS)

    @property
    def identity(self) -> str:
        """Stable digest of model + machine + relevant flags: a timing measured here is only reused here."""
        relevant = sorted(self.flags & set(INTERESTING_FLAGS))
        text = "|".join([self.model, self.machine, ",".join(relevant), str(self.logical_cores), distribution_version()])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "machine": self.machine,
            "family": self.family.value,
            "logical_cores": self.logical_cores,
            "isa": {flag: flag in self.flags for flag in INTERESTING_FLAGS},
            "vnni": self.vnni,
            "identity": self.identity,
        }

    def describe(self) -> str:
        """One line for reports: model, family and the int8-relevant flags present."""
        present = [f for f in INTERESTING_FLAGS if f in self.flags]
        return f"{self.model} ({self.machine}, {self.family.value}; {self.logical_cores} cores; {' '.join(present)})"


def _usable_cores() -> int:
    """Cores this process may run on (its affinity, which a container or taskset narrows), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def read_cpu(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo", machine: str | None = None) -> CpuInfo:
    """Parse ``/proc/cpuinfo`` (x86 ``model name``/``flags``, ARM ``Features``/``CPU part``); never raises."""
    model = ""
    flags: frozenset[str] = frozenset()
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in {"model name", "Model", "Hardware"} and not model:
            model = value.strip()
        elif key == "CPU part" and not model:
            model = f"ARM part {value.strip()}"
        elif key in {"flags", "Features"} and not flags:
            flags = frozenset(value.split())
    machine = machine or platform.machine()
    return CpuInfo(model or platform.processor() or machine, machine, flags, _usable_cores())


# Set to a family (``x86-vnni``, ``x86-avx2``, ``arm64``) to take every CPU decision as that CPU would:
# kernel choice, int8 target warnings, ``best``. Tests use it to cover each family on any machine, and a
# user uses it to reproduce a report from another device. It changes decisions, not the arithmetic.
SIMULATE_ENV = "EDGETL_SIMULATE_CPU"

# The flags each simulated family reports (what a typical CPU of that family lists).
_SIMULATED: dict[CpuFamily, tuple[str, frozenset[str]]] = {
    CpuFamily.X86_VNNI: ("x86_64", frozenset({"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni"})),
    CpuFamily.X86_AVX2: ("x86_64", frozenset({"avx2", "fma", "f16c"})),
    CpuFamily.ARM64: ("aarch64", frozenset({"asimd", "asimddp", "asimdhp", "fphp", "i8mm"})),
}
SIMULATED_FAMILIES = tuple(family.value for family in _SIMULATED)


def simulated_cpu(family: str | CpuFamily, real: CpuInfo | None = None) -> CpuInfo:
    """A CPU of ``family`` with that family's flags, named after the real one so reports stay honest."""
    try:
        chosen = CpuFamily(family)
        machine, flags = _SIMULATED[chosen]
    except (ValueError, KeyError):
        raise ValueError(
            f"{SIMULATE_ENV}={family!r} is not a CPU family edgetl can simulate; "
            f"set one of {list(SIMULATED_FAMILIES)} or unset it"
        ) from None
    real = real or real_cpu()
    return CpuInfo(f"{real.model} [simulated {chosen.value}]", machine, flags, real.logical_cores)


_THIS_CPU: CpuInfo | None = None


def real_cpu() -> CpuInfo:
    """The CPU this process really runs on, whatever is simulated: what the arithmetic of a kernel depends on."""
    global _THIS_CPU  # noqa: PLW0603 - a process-wide constant, read lazily
    if _THIS_CPU is None:
        _THIS_CPU = read_cpu()
    return _THIS_CPU


def this_cpu() -> CpuInfo:
    """The CPU this process runs on (read once), or the family named by ``EDGETL_SIMULATE_CPU``."""
    simulated = os.environ.get(SIMULATE_ENV, "").strip()
    return simulated_cpu(simulated) if simulated else real_cpu()
