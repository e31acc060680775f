"""What an enrolment state costs on disk for each image policy, and what re-extraction from kept images buys.

One state serves every precision of a bundle and every re-export: a model it has no features for
computes them from the images it kept (issue 16, item 7). This measures, with the bundled
EfficientNet-Lite0 (real ImageNet weights) and real photos (skimage's and matplotlib's sample photos, 8
scenes from 300x451 to 1411x1411 px):

1. Bytes per kept image for ``original``, ``thumbnail:384`` (the default), ``thumbnail:256`` and ``none``,
   on the full photos, on camera-like frames (60-90 % crops), on 100-140 px crops and on Fashion-MNIST
   (28x28); and the state file's size per enrolled sample with one model's features, then two (pixels +
   features + SQLite's pages, after a checkpoint; nothing predicted yet).
2. Fidelity: cosine between fp32 features of each photo and of its thumbnail (what a re-extraction sees).
3. Upkeep: the time to open a state of 400 kept frames (every table but the images is quick_checked)
   against SQLite's full quick_check of the same file; and ``put_features`` (caching a prediction's
   features) in a state of 5,000 samples and 10,000 cached predictions, against one eviction count.
4. A precision switch on a real task: 8 classes (one scene each), K = 5 crops enrolled at int8, then the
   state loaded at fp32 (features re-extracted from the kept thumbnails) against a state enrolled at fp32
   from the original crops; accuracy on 20 other crops per class, the one-off re-extraction time per
   sample, and the next load's time (features stored: no backbone run).

Usage::

    .venv/bin/python benchmarks/bench_state_storage.py --out runs/bench/state_storage.json
    .venv/bin/python benchmarks/bench_state_storage.py --bundle runs/bench/state-lite0-224.edgetl  # reuse
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgetl_runtime.learner import Learner
from edgetl_runtime.measure.latency import environment
from edgetl_runtime.state.image_policy import ImageKeeping, encode_pixels
from edgetl_runtime.state.store import FeatureStore

POLICIES = ("original", "thumbnail:384", "thumbnail:256", "none")  # 384: the default
SCENES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "grace_hopper",
)


def photos() -> dict[str, np.ndarray]:
    """Real RGB photos that ship with skimage and matplotlib (no download)."""
    import matplotlib.cbook
    import skimage.data
    from PIL import Image

    out = {name: np.asarray(getattr(skimage.data, name)())[..., :3] for name in SCENES[:-1]}
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as fh:
        out["grace_hopper"] = np.asarray(Image.open(fh).convert("RGB"))
    return {k: np.ascontiguousarray(v, dtype=np.uint8) for k, v in out.items()}


def crops(image: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """``n`` random square-ish crops of 100-140 px (a user's object photos, at thumbnail scale already)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = int(rng.integers(100, 141)), int(rng.integers(100, 141))
        top, left = int(rng.integers(0, image.shape[0] - h)), int(rng.integers(0, image.shape[1] - w))
        out.append(np.ascontiguousarray(image[top : top + h, left : left + w]))
    return out


def big_crops(image: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """``n`` crops covering 60-90 % of a photo's sides: larger than the default thumbnail, like camera frames."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = (int(s * rng.uniform(0.6, 0.9)) for s in image.shape[:2])
        top, left = int(rng.integers(0, image.shape[0] - h + 1)), int(rng.integers(0, image.shape[1] - w + 1))
        out.append(np.ascontiguousarray(image[top : top + h, left : left + w]))
    return out


def kept_bytes(images: list[np.ndarray], policy: str) -> dict[str, float]:
    """Mean bytes kept per image, and the time to make them (thumbnail + encoding: added to ``add``)."""
    keeping = ImageKeeping.from_text(policy)
    sizes, seconds = [], []
    for image in images:
        start = time.perf_counter()
        small = keeping.shrink(image)
        sizes.append(0 if small is None else len(encode_pixels(small)))
        seconds.append(time.perf_counter() - start)
    raw = float(np.mean([img.nbytes for img in images]))
    return {
        "mean_bytes": round(float(np.mean(sizes)), 1),
        "raw_rgb_bytes": round(raw, 1),
        "keep_ms_median": round(1e3 * float(np.median(seconds)), 2),
    }


def storage(photo_set: dict[str, np.ndarray]) -> dict[str, Any]:
    from edgetl.datasets import load_fashion_mnist

    fmnist = [
        np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img
        for img in load_fashion_mnist("test").images[:100]
    ]
    sets = {
        "full_photos": list(photo_set.values()),
        "frames_60_90pct": [c for i, img in enumerate(photo_set.values()) for c in big_crops(img, 2, i)],
        "crops_100_140px": [c for i, img in enumerate(photo_set.values()) for c in crops(img, 4, i)],
        "fashion_mnist_28px": fmnist,
    }
    out: dict[str, Any] = {name: {p: kept_bytes(images, p) for p in POLICIES} for name, images in sets.items()}
    out["twelve_megapixel"] = twelve_megapixel(photo_set["grace_hopper"])
    return out


def twelve_megapixel(photo: np.ndarray) -> dict[str, Any]:
    """A phone-sized frame (grace_hopper upscaled to 3000x4000): keeping its thumbnail vs preprocessing it."""
    from PIL import Image

    from edgetl_runtime.preprocess import PreprocessSpec, preprocess_batch

    big = np.asarray(Image.fromarray(photo).resize((4000, 3000), Image.BICUBIC))
    spec = PreprocessSpec(input_size=(224, 224), crop_pct=1.0)
    keep, prep = [], []
    for _ in range(3):
        start = time.perf_counter()
        encode_pixels(ImageKeeping().shrink(big))  # type: ignore[arg-type]
        keep.append(time.perf_counter() - start)
        start = time.perf_counter()
        preprocess_batch([big], spec)
        prep.append(time.perf_counter() - start)
    return {
        "keep_ms_median": round(1e3 * float(np.median(keep))),
        "preprocess_ms_median": round(1e3 * float(np.median(prep))),
    }


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def fidelity(bundle: Path, photo_set: dict[str, np.ndarray]) -> dict[str, Any]:
    """fp32 features of each photo vs of its kept thumbnail (the input a re-extraction gets)."""
    out: dict[str, Any] = {}
    with Learner.load(bundle, precision="fp32") as learner:
        frames = [c for i, img in enumerate(photo_set.values()) for c in big_crops(img, 2, i)]
        originals = learner.features(frames)
        for size in (384, 256, 224):
            kept = [ImageKeeping.parse(size).shrink(img) for img in frames]
            cos = cosine(originals, learner.features(kept))  # type: ignore[arg-type]
            out[f"thumbnail:{size}"] = {"min": round(float(cos.min()), 5), "mean": round(float(cos.mean()), 5)}
    out["frames"] = len(frames)
    return out


def switch(bundle: Path, photo_set: dict[str, np.ndarray], shots: int, queries: int) -> dict[str, Any]:
    """Enrol at int8, load at fp32 (re-extraction from thumbnails) vs enrol at fp32 from the originals."""
    classes = list(photo_set)
    enrol = {c: big_crops(photo_set[c], shots, 100 + i) for i, c in enumerate(classes)}
    test = {c: big_crops(photo_set[c], queries, 200 + i) for i, c in enumerate(classes)}
    truth = np.array([c for c in classes for _ in range(queries)])
    test_images = [img for c in classes for img in test[c]]
    result: dict[str, Any] = {"classes": len(classes), "shots": shots, "queries_per_class": queries}
    n = len(classes) * shots
    with tempfile.TemporaryDirectory(prefix="edgetl-state-") as tmp:
        state = Path(tmp) / "device.sqlite"
        with Learner.load(bundle, state, precision="int8") as learner:
            for c in classes:
                learner.add(enrol[c], c)
            learner.save()  # checkpoint: the file holds everything
            result["bytes_per_sample_one_model"] = round(learner.storage()["file_bytes"] / n)
            result["kept_pixel_bytes_per_sample"] = round(learner.storage()["kept_pixel_bytes"] / n)
            result["int8_accuracy"] = round(float(np.mean(learner.predict(test_images) == truth)), 4)
        start = time.perf_counter()
        with Learner.load(bundle, state, precision="fp32") as learner:
            seconds = time.perf_counter() - start
            runs = learner.backbone_runs
            models = learner.storage()["models"]
            result["bytes_per_feature_vector"] = {
                m["precision"]: round(m["feature_bytes"] / m["features"]) for m in models
            }
            result["fp32_from_thumbnails_accuracy"] = round(float(np.mean(learner.predict(test_images) == truth)), 4)
        result["switch_load_seconds"] = round(seconds, 2)
        result["reextracted_samples"] = runs
        start = time.perf_counter()
        with Learner.load(bundle, state, precision="fp32") as learner:
            result["next_load_seconds"] = round(time.perf_counter() - start, 2)
            result["next_load_backbone_runs"] = learner.backbone_runs
        with Learner.load(bundle, Path(tmp) / "direct.sqlite", precision="fp32") as learner:
            for c in classes:
                learner.add(enrol[c], c)
            result["fp32_from_originals_accuracy"] = round(float(np.mean(learner.predict(test_images) == truth)), 4)
    return result


def upkeep(photo_set: dict[str, np.ndarray]) -> dict[str, Any]:
    """Open time with the kept images left out of quick_check, and the cost of caching a prediction."""
    import sqlite3

    frames = [c for i, img in enumerate(photo_set.values()) for c in big_crops(img, 50, i)]  # 400 frames
    out: dict[str, Any] = {"frames": len(frames)}
    with tempfile.TemporaryDirectory(prefix="edgetl-upkeep-") as tmp:
        path = Path(tmp) / "s.sqlite"
        digest, dim = "a" * 64, 1280
        with FeatureStore(path, model_digest=digest, feature_dim=dim, preprocess_key="p") as store:
            for start in range(0, len(frames), 50):
                chunk = frames[start : start + 50]
                keys = [f"{start + i:064x}" for i in range(len(chunk))]
                store.add_samples(keys, ["x"] * len(chunk), np.ones((len(chunk), dim), np.float32), chunk)
            store.checkpoint()
        out["file_mb"] = round(path.stat().st_size / 1e6, 1)
        opens, checks = [], []
        for _ in range(5):
            start = time.perf_counter()
            FeatureStore(path, model_digest=digest, feature_dim=dim, preprocess_key="p").close()
            opens.append(time.perf_counter() - start)
            con = sqlite3.connect(path)
            start = time.perf_counter()
            con.execute("PRAGMA quick_check").fetchall()
            checks.append(time.perf_counter() - start)
            con.close()
        out["open_ms_median"] = round(1e3 * float(np.median(opens)), 1)
        out["full_quick_check_ms_median"] = round(1e3 * float(np.median(checks)), 1)
        rng = np.random.default_rng(0)
        cache = Path(tmp) / "cache.sqlite"
        with FeatureStore(cache, model_digest=digest, feature_dim=64, preprocess_key="p", keep_images="none") as store:
            store.add_samples([f"s{i:063x}" for i in range(5000)], ["x"] * 5000, rng.normal(size=(5000, 64)))
            for b in range(100):
                store.put_features({f"c{b:03d}{i:060x}": rng.normal(size=64) for i in range(100)})
            times = []
            for i in range(300):
                start = time.perf_counter()
                store.put_features({f"n{i:063x}": rng.normal(size=64)})
                times.append(time.perf_counter() - start)
            start = time.perf_counter()
            store.cache.evict()
            out["eviction_count_ms"] = round(1e3 * (time.perf_counter() - start), 2)
        out["put_features_ms"] = {
            "p50": round(1e3 * float(np.median(times)), 3),
            "mean": round(1e3 * float(np.mean(times)), 3),
        }
    return out


def export(path: Path, size: int) -> None:
    from edgetl.datasets import load_fashion_mnist
    from edgetl.export import export_bundle
    from edgetl_exporters.quantization import QuantizeConfig

    export_bundle(
        "tf_efficientnet_lite0",
        path,
        weights="bundled",
        data=load_fashion_mnist("train"),
        data_source="fashion-mnist",
        image_size=size,
        quantize_config=QuantizeConfig.preset("portable", num_calibration=200),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=None, help="reuse a bundle with fp32 and int8 members")
    parser.add_argument("--size", type=int, default=224, help="input size of the exported bundle")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/state_storage.json"))
    args = parser.parse_args()
    env = environment()
    print(json.dumps(env["cpu"]), flush=True)
    bundle = args.bundle or Path(f"runs/bench/state-lite0-{args.size}.edgetl")
    if args.bundle is None and not bundle.exists():
        bundle.parent.mkdir(parents=True, exist_ok=True)
        export(bundle, args.size)
    photo_set = photos()
    result: dict[str, Any] = {
        "environment": env,
        "bundle": str(bundle),
        "photos": {k: list(v.shape) for k, v in photo_set.items()},
    }
    result["kept_bytes"] = storage(photo_set)
    print("kept bytes", json.dumps(result["kept_bytes"]), flush=True)
    result["fidelity"] = fidelity(bundle, photo_set)
    print("fidelity", json.dumps(result["fidelity"]), flush=True)
    result["upkeep"] = upkeep(photo_set)
    print("upkeep", json.dumps(result["upkeep"]), flush=True)
    result["precision_switch"] = switch(bundle, photo_set, args.shots, args.queries)
    print("precision switch", json.dumps(result["precision_switch"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
