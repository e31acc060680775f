"""One classifier from host to device to fleet (issue 13), measured on Fashion-MNIST with the bundled Lite0.

1. Export: ``edgetl export tf_efficientnet_lite0 --weights bundled --calib fashion-mnist --pooling avg
   --head-from fashion-mnist --head-classes 0-4`` (the host probes classes 0-4 with class statistics).
2. Out of the box: the shipped head's accuracy on classes 0-4 test images, on the host (fp32 and int8
   members through the host's onnxruntime) and on the device (``Learner``, ``precision="best"`` and fp32),
   nothing enrolled.
3. Extension: the device enrols classes 5-9 with K shots each (train images, per seed); 10-way accuracy
   on every test image, and on classes 0-4 against out of the box; against a device without the shipped
   head enrolling all ten classes from K shots (same seeds).
4. Fleet: two devices learn classes {5, 6} and {7, 8, 9} from the same shots; ``edgetl merge`` (the
   library call) folds their enrolment files into a new bundle; a third device with nothing enrolled
   is scored against the single device that enrolled every shot (step 3, same seed).
5. Timings: load + first prediction with a shipped head, and ``Learner.add`` of one sample (features
   cached) into a head with 5 shipped classes, in memory and in a SQLite file; sizes of the head.

Usage::

    .venv/bin/python benchmarks/bench_fleet.py --size 224 --out runs/bench/fleet_224.json

Test features are computed once into a cache-only state file that every device copies (they all run the
same model digest), so the devices never recompute them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.datasets import ImageDataset, load_fashion_mnist
from edgetl.export import BundleConfig, export_bundle
from edgetl.merge import merge_enrolments
from edgetl.shipped_head import HeadConfig, member_features
from edgetl_exporters.quantization import QuantizeConfig
from edgetl_runtime.backends.cpu import this_cpu
from edgetl_runtime.bundle.manifest import Precision
from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.bundle.shipped_head import read_prior
from edgetl_runtime.heads import LDAHead
from edgetl_runtime.learner import Learner
from edgetl_runtime.measure.latency import measure

HOST, NEW = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
HALVES = ([5, 6], [7, 8, 9])


def export(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    train = load_fashion_mnist("train")
    start = time.perf_counter()
    result = export_bundle(
        "tf_efficientnet_lite0",
        path,
        weights="bundled",
        data=train,
        data_source="fashion-mnist",
        config=BundleConfig(pooling="avg", head=HeadConfig(per_class=args.head_per_class, rank=args.rank)),
        image_size=args.size,
        quantize_config=QuantizeConfig.preset("portable", num_calibration=300),
        head_data=train.select_classes(HOST),
        head_source="fashion-mnist classes 0-4",
    )
    return {"seconds": round(time.perf_counter() - start, 1), "path": str(result.path)}


def test_set(per_class: int) -> ImageDataset:
    test = load_fashion_mnist("test")
    rng = np.random.default_rng(1)
    picks = [rng.permutation(np.flatnonzero(test.labels == c))[:per_class] for c in range(10)]
    return test.subset(np.sort(np.concatenate(picks)))


def shots(train: ImageDataset, classes: list[int], k: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    rng = np.random.default_rng(1000 + seed)
    idx = [i for c in classes for i in rng.choice(np.flatnonzero(train.labels == c), k, replace=False)]
    return [train.images[i] for i in idx], [train.classes[int(train.labels[i])] for i in idx]


def accuracy(predicted: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    m = np.ones(len(truth), dtype=bool) if mask is None else mask
    return round(100.0 * float(np.mean(predicted[m] == truth[m])), 2)


class Devices:
    """Learners that share one cache-only state (test and shot features), each on its own copy."""

    def __init__(self, folder: Path, bundle: Path, images: list[np.ndarray], threads: int | None) -> None:
        self.folder, self.threads, self.count = folder, threads, 0
        self.cache = folder / "cache.sqlite"
        with Learner.load(bundle, self.cache, threads=threads) as learner:
            start = time.perf_counter()
            if images:
                learner.features(images)  # cached, not enrolled
            self.feature_seconds = time.perf_counter() - start
            learner.save()
            self.precision = learner.backend.precision.value
            self.kernel = learner.selection.kernel if learner.selection else None

    def load(self, bundle: Path, **kw: Any) -> Learner:
        self.count += 1
        state = self.folder / f"device{self.count}.sqlite"
        shutil.copy(self.cache, state)
        return Learner.load(bundle, state, threads=self.threads, precision=self.precision, **kw)


def out_of_box(bundle: Path, test: ImageDataset, devices: Devices, args: argparse.Namespace) -> dict[str, Any]:
    b = Bundle.open(bundle)
    prior = read_prior(b)
    assert prior is not None
    truth = np.array([test.classes[int(i)] for i in test.labels])
    mask = np.isin(test.labels, HOST)
    images = [test.images[i] for i in np.flatnonzero(mask)]
    head = LDAHead().fit(None, None, prior=prior)  # the host scoring its own shipped head
    out: dict[str, Any] = {"images": int(mask.sum()), "manifest_accuracy": b.manifest.head["accuracy"]}
    for precision in b.manifest.precisions:
        feats = member_features(b.model_bytes(precision), b.manifest.preprocess, images)
        out[f"host_{precision.value}"] = accuracy(head.predict(feats), truth[mask])
    with devices.load(bundle) as device:
        out["device_precision"], out["device_kernel"] = devices.precision, devices.kernel
        out["device_best"] = accuracy(device.predict(images), truth[mask])
    fp32 = Learner.load(bundle, None, precision="fp32", threads=devices.threads)
    with fp32:
        out["device_fp32"] = accuracy(fp32.predict(images), truth[mask])
    host_same = out.get(f"host_{devices.precision}")
    out["gap_device_vs_host_same_model"] = None if host_same is None else round(out["device_best"] - host_same, 2)
    out["gap_device_fp32_vs_host_fp32"] = round(out["device_fp32"] - out["host_fp32"], 2)
    return out


def episodes(bundle: Path, test: ImageDataset, devices: Devices, args: argparse.Namespace) -> dict[str, Any]:
    train = load_fashion_mnist("train")
    truth = np.array([test.classes[int(i)] for i in test.labels])
    old, images = np.isin(test.labels, HOST), list(test.images)
    rows: list[dict[str, Any]] = []
    with devices.load(bundle) as device, devices.load(bundle, shipped_head=False) as plain:
        oob = accuracy(device.predict(images), truth, old)
        for seed in range(args.seeds):
            new_imgs, new_labels = shots(train, NEW, args.shots, seed)
            device.add(new_imgs, new_labels)
            pred = device.predict(images)
            row = {"seed": seed, "ten_way": accuracy(pred, truth), "classes_0_4": accuracy(pred, truth, old)}
            row["classes_5_9"] = accuracy(pred, truth, ~old)
            for label in sorted(set(new_labels)):
                device.remove(label=label)
            all_imgs, all_labels = shots(train, list(range(10)), args.shots, seed)
            plain.add(all_imgs, all_labels)
            row["no_shipped_head_ten_way"] = accuracy(plain.predict(images), truth)
            for label in sorted(set(all_labels)):
                plain.remove(label=label)
            row["merged"] = fleet(bundle, train, test, devices, seed, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {k: _mean_sd([r[k] for r in rows]) for k in ("ten_way", "classes_0_4", "classes_5_9")}
    summary["no_shipped_head_ten_way"] = _mean_sd([r["no_shipped_head_ten_way"] for r in rows])
    summary["merged_ten_way"] = _mean_sd([r["merged"]["ten_way"] for r in rows])
    summary["merged_minus_single_device"] = [round(r["merged"]["ten_way"] - r["ten_way"], 2) for r in rows]
    summary["out_of_box_classes_0_4"] = oob
    summary["classes_0_4_drop"] = round(oob - summary["classes_0_4"]["mean"], 2)
    summary["shipped_minus_device_only"] = round(
        summary["ten_way"]["mean"] - summary["no_shipped_head_ten_way"]["mean"], 2
    )
    return {"shots": args.shots, "seeds": args.seeds, "rows": rows, "summary": summary}


def fleet(
    bundle: Path, train: ImageDataset, test: ImageDataset, devices: Devices, seed: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Two devices, one half of the new classes each (the shots of the single-device run), merged."""
    new_imgs, new_labels = shots(train, NEW, args.shots, seed)
    files = []
    for i, half in enumerate(HALVES):
        names = {train.classes[c] for c in half}
        with devices.load(bundle) as device:
            keep = [j for j, name in enumerate(new_labels) if name in names]
            device.add([new_imgs[j] for j in keep], [new_labels[j] for j in keep])
            files.append(device.export_enrolment(devices.folder / f"seed{seed}-device{i}.enrol").path)
    merged = devices.folder / f"seed{seed}-merged.edgetl"
    start = time.perf_counter()
    result = merge_enrolments(bundle, files, merged)
    seconds = time.perf_counter() - start
    truth = np.array([test.classes[int(i)] for i in test.labels])
    with devices.load(merged) as third:
        assert len(third.store) == 0
        ten_way = accuracy(third.predict(list(test.images)), truth)
    return {"ten_way": ten_way, "merge_seconds": round(seconds, 2), "samples": result.report["samples_merged"]}


def timings(bundle: Path, devices: Devices, args: argparse.Namespace) -> dict[str, Any]:
    train = load_fashion_mnist("train")
    image = train.images[np.flatnonzero(train.labels == 7)[0]]
    out: dict[str, Any] = {}
    fresh = tempfile.mkdtemp(prefix="edgetl-fleet-choice-")
    for attempt in ("first", "again"):  # first: best's one-off precision timing runs (an empty choice cache)
        saved = os.environ.get("EDGETL_CACHE_DIR")
        os.environ["EDGETL_CACHE_DIR"] = fresh
        start = time.perf_counter()
        learner = Learner.load(bundle, None, threads=args.threads)
        if saved is None:
            del os.environ["EDGETL_CACHE_DIR"]
        else:
            os.environ["EDGETL_CACHE_DIR"] = saved
        loaded = time.perf_counter()
        label = learner.predict([image])[0]
        done = time.perf_counter()
        learner.close()
        out[f"load_{attempt}_s"] = round(loaded - start, 3)
        out[f"first_predict_{attempt}_ms"] = round(1e3 * (done - loaded), 2)
        out[f"predicted_{attempt}"] = str(label)
    start = time.perf_counter()
    prior = read_prior(Bundle.open(bundle))
    out["open_and_read_head_s"] = round(time.perf_counter() - start, 3)
    assert prior is not None
    out["fit_from_shipped_head_ms"] = measure(lambda: LDAHead().fit(None, None, prior=prior), runs=20).p50_ms
    pool = [train.images[i] for i in np.flatnonzero(train.labels == 5)[: args.enrol_runs + 20]]
    for where in ("memory", "sqlite-file"):
        with devices.load(bundle) if where == "sqlite-file" else Learner.load(bundle, None) as learner:
            learner.features(pool)  # cached before timing: what is timed is everything after the backbone
            runs_before = learner.backbone_runs
            stats = measure(_adder(learner, pool), runs=args.enrol_runs, warmup=10)
            assert learner.backbone_runs == runs_before, "a backbone ran while timing"
            out[f"enrol_one_{where}"] = {**stats.to_dict(), "shipped_classes": 5, "head": learner.head.kind}
    return out


def _adder(learner: Learner, pool: list[np.ndarray]) -> Any:
    queue = iter(pool)
    return lambda: learner.add([next(queue)], "Sandal")  # a new sample of one new class each call


def sizes(bundle: Path, rank: int) -> dict[str, Any]:
    m = Bundle.open(bundle).manifest
    head, int8 = m.members["head.npz"].size, m.members[Precision.INT8.member].size
    formula = {f"D={d}, C={c}": round((c * rank * d * 2 + c * d * 4) / 1e3, 1) for d in (1280, 11520) for c in (5, 10)}
    return {
        "head_bytes": head,
        "int8_member_bytes": int8,
        "head_over_int8": round(head / int8, 4),
        "rank": rank,
        "formula_kb (float16 factors + float32 sums)": formula,
        "dense_scatter_kb_per_class (float32 D x D)": {d: round(d * d * 4 / 1e3, 1) for d in (1280, 11520)},
    }


def _mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": round(float(np.mean(values)), 2), "sd": round(float(np.std(values)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224, help="input size (96 for a quick run)")
    parser.add_argument("--bundle", type=Path, default=None, help="reuse an export made by this script")
    parser.add_argument("--test-per-class", type=int, default=500)
    parser.add_argument("--head-per-class", type=int, default=600)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--enrol-runs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--parts", default="all", choices=["all", "timings"], help="timings: only sizes and timings (needs --bundle)"
    )
    args = parser.parse_args()
    out_path = args.out or Path(f"runs/bench/fleet_{args.size}.json")
    result: dict[str, Any] = {
        "cpu": this_cpu().describe(),
        "size": args.size,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    print(result["cpu"], flush=True)
    bundle = args.bundle or Path(f"runs/bench/fleet-lite0-{args.size}.edgetl")
    if args.bundle is None:
        result["export"] = export(args, bundle)
        print("export", result["export"], flush=True)
    result["sizes"] = sizes(bundle, args.rank)
    print("sizes", json.dumps(result["sizes"]), flush=True)
    if args.parts == "timings":
        with tempfile.TemporaryDirectory(prefix="edgetl-fleet-") as tmp:
            devices = Devices(Path(tmp), bundle, [], args.threads)
            result["timings"] = timings(bundle, devices, args)
        print("timings", json.dumps(result["timings"]), flush=True)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2))
        return
    test = test_set(args.test_per_class)
    train = load_fashion_mnist("train")
    pool = [
        img
        for seed in range(args.seeds)
        for classes in (NEW, list(range(10)))
        for img in shots(train, classes, args.shots, seed)[0]
    ]
    with tempfile.TemporaryDirectory(prefix="edgetl-fleet-") as tmp:
        devices = Devices(Path(tmp), bundle, list(test.images) + pool, args.threads)
        result["device_feature_seconds"] = round(devices.feature_seconds, 1)
        result["out_of_box"] = out_of_box(bundle, test, devices, args)
        print("out of box", json.dumps(result["out_of_box"]), flush=True)
        result["episodes"] = episodes(bundle, test, devices, args)
        print("episodes", json.dumps(result["episodes"]["summary"]), flush=True)
        result["timings"] = timings(bundle, devices, args)
        print("timings", json.dumps(result["timings"]), flush=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
