"""Memory and time of the host's folder loader on large photos: held full size vs shrunk to what the model needs.

Writes N synthetic 12-megapixel JPEGs (4000 x 3000, smooth colour fields + noise, two class folders), then in
a fresh process per mode loads them and reports the peak RSS, the bytes held and the wall time:

- ``full``: every photo decoded by the runtime's ``load_image`` and kept at full size (what the host did before
  issue 21, apart from EXIF / 16-bit handling);
- ``shrunk``: ``edgetl.datasets.load_image_folder`` (decoded one at a time, kept shrunk to ``HOST_MIN_SIDE``).

    python benchmarks/bench_host_decode.py [--count 24] [--out runs/bench/host_decode.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_photos(folder: Path, count: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        cls = folder / ("a" if i % 2 else "b")
        cls.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((4000, 3000), Image.Resampling.BILINEAR))
        noisy = np.clip(field.astype(np.int16) + rng.integers(-12, 13, field.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(cls / f"{i}.jpg", quality=90)


def _vm(name: str) -> float:
    """This process's VmHWM / VmRSS in MB (VmHWM, not getrusage's ru_maxrss, which survives exec)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(f"{name}:"))
    return int(line.split()[1]) / 1024


def child(mode: str, folder: str) -> None:
    """Load the folder one way; print peak RSS above the host's baseline (torch imported), bytes held, seconds."""
    from edgetl.datasets import load_image_folder  # the host: imports torch, whatever the mode
    from edgetl_runtime.images import load_image

    baseline = _vm("VmRSS")
    start = time.perf_counter()
    if mode == "full":
        images = [load_image(p) for p in sorted(Path(folder).rglob("*.jpg"))]
    else:
        images = list(load_image_folder(folder).images)
    seconds = time.perf_counter() - start
    held = sum(img.nbytes for img in images)
    print(json.dumps({"peak_above_baseline_mb": _vm("VmHWM") - baseline, "baseline_mb": baseline,
                      "held_mb": held / 2**20, "seconds": seconds}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=24, help="12-megapixel JPEGs to write")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/host_decode.json"), help="JSON report")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    from edgetl.datasets import HOST_MIN_SIDE
    from edgetl_runtime.backends.cpu import this_cpu

    print(this_cpu().describe())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_photos(Path(tmp), args.count)
        for mode in ("full", "shrunk"):
            run = subprocess.run(
                [sys.executable, __file__, "--child", mode, tmp], capture_output=True, text=True, check=True
            )
            results[mode] = json.loads(run.stdout.strip().splitlines()[-1])
            r = results[mode]
            print(
                f"{mode:>6}: peak RSS +{r['peak_above_baseline_mb']:.0f} MB over the host's baseline, "
                f"held {r['held_mb']:.0f} MB, {r['seconds']:.1f} s"
            )
    report = {"cpu": this_cpu().describe(), "count": args.count, "size": [3000, 4000], "min_side": HOST_MIN_SIDE,
              "results": results}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
