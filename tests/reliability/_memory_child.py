"""Peak-memory child: warm up on a good bundle (the baseline), then open each hostile bundle; print one JSON line each.

Before each bundle the kernel's peak-RSS mark is reset to the current RSS (``/proc/self/clear_refs``, Linux >= 4.0),
so ``peak_mib`` is that bundle's own peak above the process as it stood (``reset``: true). Where the reset is not
available it falls back to ``ru_maxrss``, the lifetime high-water mark (a transient below an earlier peak is then
invisible: ``reset`` false). ``--control BUNDLE`` instead reads the bundle's golden.npz with ``np.load`` (what the
reader did before round 2), to show the meter sees a bomb.

    python _memory_child.py GOOD NAME=BUNDLE[+add] ...
"""

from __future__ import annotations

import gc
import io
import json
import resource
import sys
import warnings
import zipfile

import numpy as np

from edgetl_runtime.errors import EdgeTLError
from edgetl_runtime.learner import Learner


def _status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            line = next((row for row in fh if row.startswith(field + ":")), None)
    except OSError:
        return None
    return int(line.split()[1]) / 1024 if line else None  # kB


def reset_peak() -> tuple[float, bool]:
    """(the RSS to measure from, whether the peak mark now equals it)."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        current = _status_mib("VmRSS")
        if current is not None and _status_mib("VmHWM") is not None:
            return current, True
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, False  # Linux: KiB


def peak_mib(reset: bool) -> float:
    value = _status_mib("VmHWM") if reset else None
    return value if value is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def attempt(path: str, add: bool) -> str:
    try:
        with Learner.load(path, None, backend="onnxruntime", head="ncm") as learner:
            if add:
                learner.add([np.zeros((40, 40, 3), np.uint8)], "x")
        return "loaded"
    except EdgeTLError as exc:
        return type(exc).__name__
    except Exception as exc:  # reported, not raised: the parent counts it as a failure
        return f"RAW {type(exc).__name__}: {exc}"


def main(good: str, items: list[str]) -> None:
    warnings.simplefilter("ignore")
    with Learner.load(good, None, backend="onnxruntime", head="ncm") as learner:  # every lazy import and arena
        learner.add([np.zeros((40, 40, 3), np.uint8)], "warm")
        learner.predict([np.zeros((40, 40, 3), np.uint8)])
    if items[0] == "--control":
        base, reset = reset_peak()
        with zipfile.ZipFile(items[1]) as archive, np.load(io.BytesIO(archive.read("golden.npz"))) as npz:
            sum(npz[k].nbytes for k in npz.files)
        print(json.dumps({"bundle": "control", "peak_mib": round(peak_mib(reset) - base, 1), "reset": reset}))
        return
    for item in items:
        name, _, spec = item.partition("=")
        path, _, add = spec.partition("+")
        base, reset = reset_peak()
        outcome = attempt(path, bool(add))
        row = {"bundle": name, "outcome": outcome, "peak_mib": round(peak_mib(reset) - base, 1), "reset": reset}
        print(json.dumps({**row, "rss_mib": round(base, 1)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
