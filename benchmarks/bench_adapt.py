"""Issue 22: does adapting the few-shot head to the images the device has seen help, and never hurt?

On the default export of the bundled Lite0 (``edgetl export`` defaults: 224 px, grid3, portable int8,
Fashion-MNIST calibration; features through the device runtime, cached by ``adapt_data.py``), for each of
20 seeds and K shots per class (episodes from a 100-per-class train pool), 1000 test images (t10k[:1000]):

- ``auto`` (labelled only), scikit-learn ``LogisticRegression(max_iter=1000)`` on the same features, and
  ``AdaptiveHead`` given the features of a stream of seen images drawn from t10k[1000:5000] (disjoint from
  the test images): balanced (1000), imbalanced (Zipf, 10x between the most and least frequent class),
  30 % of classes never enrolled (7 enrolled, 3 not; scored on the 7), drifting (class mix shifting, the
  latest 1000 kept), tiny (5 images), none;
- open set: 5 known / 5 unknown classes (10 draws), K = 1 / 5 / 20, a balanced stream of all 10 classes
  seen (1000 images, 20 and 100 of them drawn at random, and none): AUROC of the rejection score, % known
  kept and % unknown rejected by ``predict(reject=True)``, for the old ``auto`` score and the new one;
- cost (1 BLAS thread): ``AdaptiveHead.fit`` with 1000 seen images at the default width (from the
  ``SeenPool`` the Learner keeps, and from a plain array), ``Learner.fit()`` on a state holding them (first
  fit and refit), ``add`` of one sample, and fit-ready-for-``predict_proba`` of ``auto`` and of ``adaptive``
  without a stream against LogisticRegression (10 x 5 shots);
- digits (scikit-learn's bundled 8x8 digits through the same bundle): no stream, ``auto`` vs LR.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_adapt.py [--seeds 20] [--precisions fp32,int8]

Writes ``runs/bench_adapt/bench_adapt.json`` and ``.png`` and prints every figure beside the CPU line.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import adapt_data as data
import numpy as np
from threadpoolctl import threadpool_limits

from edgetl_runtime.backends.cpu import this_cpu
from edgetl_runtime.fewshot import episode
from edgetl_runtime.heads import AdaptiveHead, create_head
from edgetl_runtime.heads.seen_pool import SeenPool

OUT = Path("runs/bench_adapt")
PARTS = ("accuracy", "open_set", "cost", "digits")
SCENARIOS = ("balanced", "imbalanced", "unknown30", "drifting", "tiny", "none")
CLASSES = np.arange(10)


def lr_predict(x: np.ndarray, y: np.ndarray, xt: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    return np.asarray(LogisticRegression(max_iter=1000).fit(x, y).predict(xt))


def stream(kind: str, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the stream and the classes that are enrolled."""
    if kind == "balanced":
        return data.balanced_stream(y, 1000, rng, CLASSES), CLASSES
    if kind == "imbalanced":
        return data.zipf_stream(y, 1000, rng, CLASSES), CLASSES
    if kind == "unknown30":
        order = rng.permutation(CLASSES)
        known = np.sort(order[:7])
        return data.open_stream(y, 1000, rng, known, np.sort(order[7:]), 0.3), known
    if kind == "drifting":
        return data.drifting_stream(y, 1000, rng, rng.permutation(CLASSES)), CLASSES
    if kind == "tiny":
        return rng.choice(len(y), 5, replace=False), CLASSES
    return np.zeros(0, dtype=np.int64), CLASSES


def accuracy(feats: dict[str, np.ndarray], shots: tuple[int, ...], seeds: int, lr: bool) -> list[dict[str, Any]]:
    pool, py, test, ty, st, sy = (feats[k] for k in ("pool", "pool_y", "test", "test_y", "stream", "stream_y"))
    rows = []
    for k in shots:
        for seed in range(seeds):
            idx = episode(py, k, seed)
            base: dict[tuple[int, ...], tuple[float, float]] = {}
            for kind in SCENARIOS:
                si, known = stream(kind, sy, np.random.default_rng(10_000 + 100 * seed + k))
                sup = idx[np.isin(py[idx], known)]
                tm = np.isin(ty, known)
                key = tuple(known)
                if key not in base:  # labelled-only heads do not see the stream: once per known set
                    auto = float(np.mean(create_head("auto").fit(pool[sup], py[sup]).predict(test[tm]) == ty[tm]))
                    lr_acc = float(np.mean(lr_predict(pool[sup], py[sup], test[tm]) == ty[tm])) if lr else np.nan
                    base[key] = (auto, lr_acc)
                head = AdaptiveHead().fit(pool[sup], py[sup], unlabelled=st[si])
                adapted = float(np.mean(head.predict(test[tm]) == ty[tm]))
                rows.append({"scenario": kind, "shots": k, "seed": seed, "auto": base[key][0], "lr": base[key][1],
                             "adaptive": adapted, "kept": bool(head.adaptation_["adapted"])})  # fmt: skip
        print(f"  K={k} done", flush=True)
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for kind in SCENARIOS:
        for k in sorted({r["shots"] for r in rows}):
            sel = [r for r in rows if r["scenario"] == kind and r["shots"] == k]
            if not sel:
                continue
            cell = {}
            for name in ("auto", "lr", "adaptive"):
                v = 100 * np.array([r[name] for r in sel])
                cell[name] = [float(np.mean(v)), float(np.std(v))]
            diff = 100 * np.array([r["adaptive"] - r["auto"] for r in sel])
            cell["adaptive-auto"] = [float(diff.mean()), float(diff.std()), float(diff.min())]
            cell["kept"] = float(np.mean([r["kept"] for r in sel]))
            out[f"{kind}/K={k}"] = cell
    return out


def open_set(feats: dict[str, np.ndarray], draws: int = 10) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    pool, py, test, ty, st, sy = (feats[k] for k in ("pool", "pool_y", "test", "test_y", "stream", "stream_y"))
    out: dict[str, Any] = {}
    for k in (1, 5, 20):
        cells: dict[str, list[list[float]]] = {
            "auto": [], "adaptive_nostream": [], "adaptive_20_seen": [], "adaptive_100_seen": [], "adaptive": []
        }  # fmt: skip
        for draw in range(draws):
            rng = np.random.default_rng(500 + draw)
            known = np.sort(rng.permutation(CLASSES)[:5])
            idx = episode(py, k, draw)
            sup = idx[np.isin(py[idx], known)]
            is_known = np.isin(ty, known)
            si = data.balanced_stream(sy, 1000, rng, CLASSES)
            heads = {
                "auto": create_head("auto").fit(pool[sup], py[sup]),
                "adaptive_nostream": AdaptiveHead().fit(pool[sup], py[sup]),
                "adaptive_20_seen": AdaptiveHead().fit(pool[sup], py[sup], unlabelled=st[rng.permutation(si)[:20]]),
                "adaptive_100_seen": AdaptiveHead().fit(pool[sup], py[sup], unlabelled=st[rng.permutation(si)[:100]]),
                "adaptive": AdaptiveHead().fit(pool[sup], py[sup], unlabelled=st[si]),
            }
            for name, h in heads.items():
                score = h.similarity(test)
                rejected = h.predict(test, reject=True).astype(str) == "unknown"
                cells[name].append([roc_auc_score(is_known, score), 1 - rejected[is_known].mean(),
                                    rejected[~is_known].mean()])  # fmt: skip
        out[f"K={k}"] = {
            name: {m: [float(100 * np.mean(col)), float(100 * np.std(col))] for m, col in
                   zip(("auroc", "known_kept", "unknown_rejected"), np.array(v).T, strict=True)}
            for name, v in cells.items()
        }  # fmt: skip
    return out


def cost(feats: dict[str, np.ndarray], bundle: Path, rounds: int = 20) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    from edgetl_runtime.measure.latency import measure_interleaved

    pool, py, st = feats["pool"], feats["pool_y"], feats["stream"][:1000]
    idx = episode(py, 5, 0)
    x, y = pool[idx], py[idx]
    one = pool[episode(py, 1, 3)][:1]
    seen = SeenPool.of(st, st.shape[1])  # what the Learner keeps between fits
    calls = {
        "auto_fit_ready": lambda: create_head("auto").fit(x, y).predict_proba(x[:1]),
        "adaptive_fit_no_stream": lambda: AdaptiveHead().fit(x, y).predict_proba(x[:1]),
        "adaptive_refit_1000_seen": lambda: AdaptiveHead().fit(x, y, unlabelled=seen).predict_proba(x[:1]),
        "adaptive_fit_1000_seen_array": lambda: AdaptiveHead().fit(x, y, unlabelled=st).predict_proba(x[:1]),
        "sklearn_lr": lambda: LogisticRegression(max_iter=1000).fit(x, y).predict_proba(x[:1]),
    }
    with threadpool_limits(1, "blas"):
        stats = measure_interleaved(calls, rounds=rounds, calls_per_round={k: 1 for k in calls})
        head = AdaptiveHead().fit(x, y, unlabelled=seen)
        adds = []
        for i in range(30):
            t = time.perf_counter()
            head.partial_fit(one, [py[idx][i % len(idx)]])
            adds.append(1e3 * (time.perf_counter() - t))
        learner = learner_refit(bundle, feats, idx, rounds)
    out: dict[str, Any] = {k: v.p50_ms for k, v in stats.items()}
    out["add_one_p50_ms"] = float(np.median(adds))
    out["speedup_auto_vs_lr"] = out["sklearn_lr"] / out["auto_fit_ready"]
    out["speedup_adaptive_no_stream_vs_lr"] = out["sklearn_lr"] / out["adaptive_fit_no_stream"]
    out.update(learner)
    return out


def learner_refit(bundle: Path, feats: dict[str, np.ndarray], idx: np.ndarray, rounds: int) -> dict[str, Any]:
    """``Learner.fit()`` of the default head on a state holding 10 x 5 shots and 1000 seen images (their cached
    features written straight into the state: no backbone runs), first fit and refits; and whether the
    Learner's head predicts exactly what ``AdaptiveHead`` fitted on the same arrays does."""
    from edgetl_runtime.learner import Learner

    pool, py, st, test = feats["pool"], feats["pool_y"], feats["stream"][:1000], feats["test"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learner = Learner.load(bundle, None, precision="fp32", measure=False)
    learner.store.put_features({f"seen{i:06d}": v for i, v in enumerate(st)})  # cached in arrival order
    learner.store.add_samples([f"shot{i:06d}" for i in idx], [str(c) for c in py[idx]], pool[idx])
    learner.keeper.changed()
    times = []
    for _ in range(rounds + 1):
        t = time.perf_counter()
        learner.fit()
        times.append(1e3 * (time.perf_counter() - t))
    reference = AdaptiveHead().fit(pool[idx], py[idx].astype(str), unlabelled=st[::-1])  # arrays: newest first
    same = bool(np.array_equal(learner.head.predict(test), reference.predict(test)))
    shifted = []  # 100 newer seen images each time: as many of the oldest leave the newest-1000 window
    for start in range(1000, 1500, 100):
        learner.store.put_features({f"seen{i:06d}": feats["stream"][i] for i in range(start, start + 100)})
        t = time.perf_counter()
        learner.fit()
        shifted.append(1e3 * (time.perf_counter() - t))
    stream = stream_predict(learner)
    learner.close()
    return {"learner_first_fit_1000_seen": times[0], "learner_refit_1000_seen": float(np.median(times[1:])),
            "learner_refit_100_new_100_out": float(np.median(shifted)),
            "learner_head_equals_adaptive_head": same, "learner_head": learner.head_kind, **stream}  # fmt: skip


def stream_predict(learner: Any, n: int = 200) -> dict[str, Any]:
    """``predict`` of one new image at a time (backbone, cache write, and the re-adaptations the stream triggers)
    against the same calls with the labelled-only head swapped in: what streaming costs per image."""
    from edgetl.datasets import load_fashion_mnist

    images = list(load_fashion_mnist("test").images[5000 : 5000 + 2 * n])
    out: dict[str, Any] = {}
    for name, part in (("adaptive", images[:n]), ("auto", images[n:])):
        learner.keeper.kind = name  # the same state and pool; "auto" neither adapts nor re-adapts
        learner.keeper.changed()
        learner.fit()
        times, refits, seen = [], 0, learner.keeper.adaptation()
        for image in part:
            t = time.perf_counter()
            learner.predict([image])
            times.append(1e3 * (time.perf_counter() - t))
            refits += learner.keeper.adaptation() is not seen  # a refit makes a new adaptation record
            seen = learner.keeper.adaptation()
        out[f"predict_one_{name}_p50_ms"] = float(np.median(times))
        out[f"predict_one_{name}_mean_ms"] = float(np.mean(times))
        out[f"predict_one_{name}_max_ms"] = float(np.max(times))
        out[f"refits_in_stream_{name}"] = refits
        out[f"seen_after_stream_{name}"] = (seen or {}).get("seen")
    return out


def digits(bundle: Path, seeds: int) -> dict[str, Any]:
    feats = data.digits_features(bundle, "fp32", OUT / "cache")
    out = {}
    for k in (1, 5):
        a, b = [], []
        for seed in range(seeds):
            idx = episode(feats["pool_y"], k, seed)
            x, y = feats["pool"][idx], feats["pool_y"][idx]
            a.append(np.mean(create_head("auto").fit(x, y).predict(feats["test"]) == feats["test_y"]))
            b.append(np.mean(lr_predict(x, y, feats["test"]) == feats["test_y"]))
        out[f"K={k}"] = {"auto": [100 * np.mean(a), 100 * np.std(a)], "lr": [100 * np.mean(b), 100 * np.std(b)]}
    return out


def plot(summary: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SCENARIOS), figsize=(3 * len(SCENARIOS), 3), sharey=True)
    for ax, kind in zip(axes, SCENARIOS, strict=True):
        keys = [k for k in summary if k.startswith(f"{kind}/")]
        ks = [int(k.split("=")[1]) for k in keys]
        for name in ("auto", "lr", "adaptive"):
            m = [summary[k][name][0] for k in keys]
            s = [summary[k][name][1] for k in keys]
            ax.errorbar(ks, m, yerr=s, label=name, marker="o", capsize=2)
        ax.set_title(kind)
        ax.set_xscale("log")
        ax.set_xlabel("shots per class")
    axes[0].set_ylabel("accuracy % (fp32, mean +- std over seeds)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--shots", default="1,5,10,20")
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--bundle", type=Path, default=OUT / "default_224.edgetl")
    parser.add_argument("--parts", default="accuracy,open_set,cost,digits", help="rerun some, keep the rest")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    cpu = this_cpu().describe()
    bundle = data.export_default(args.bundle)
    shots = tuple(int(s) for s in args.shots.split(","))
    old = OUT / "bench_adapt.json"
    result: dict[str, Any] = json.loads(old.read_text()) if old.exists() and parts != {*PARTS} else {"accuracy": {}}
    result.update(cpu=cpu, seeds=args.seeds, bundle=str(bundle))
    for precision in args.precisions.split(","):
        feats = data.fmnist_features(bundle, precision, OUT / "cache")
        print(f"{precision}: features {feats['pool'].shape[1]} wide", flush=True)
        if "accuracy" in parts:  # LogisticRegression at every K is the slow part: fp32 only
            rows = accuracy(feats, shots, args.seeds, lr=precision == "fp32")
            result["accuracy"][precision] = {"summary": summarise(rows), "rows": rows}
        if precision == "fp32" and "open_set" in parts:
            result["open_set"] = open_set(feats)
        if precision == "fp32" and "cost" in parts:
            result["cost"] = cost(feats, bundle)
    if "digits" in parts:
        result["digits_no_stream"] = digits(bundle, args.seeds)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_adapt.json").write_text(json.dumps(result, indent=2, default=float))
    plot(result["accuracy"]["fp32"]["summary"], OUT / "bench_adapt.png")
    report(result)


def report(result: dict[str, Any]) -> None:
    print(f"cpu: {result['cpu']}  ({result['seeds']} seeds, mean +- std; diff = adaptive - auto, paired)")
    for precision, acc in result["accuracy"].items():
        for key, c in acc["summary"].items():
            print(f"  {precision} {key:<18} auto {c['auto'][0]:5.1f}+-{c['auto'][1]:.1f}  LR {c['lr'][0]:5.1f}+-"
                  f"{c['lr'][1]:.1f}  adaptive {c['adaptive'][0]:5.1f}+-{c['adaptive'][1]:.1f}  diff "
                  f"{c['adaptive-auto'][0]:+.1f}+-{c['adaptive-auto'][1]:.1f} (worst {c['adaptive-auto'][2]:+.1f}), "
                  f"kept {100 * c['kept']:.0f} %")  # fmt: skip
    for k, cells in result["open_set"].items():
        for name, m in cells.items():
            print(f"  open set {k} {name:<18} AUROC {m['auroc'][0]:.1f}+-{m['auroc'][1]:.1f}  known kept "
                  f"{m['known_kept'][0]:.0f} %  unknown rejected {m['unknown_rejected'][0]:.0f} %")  # fmt: skip
    print("  cost (1 BLAS thread, p50 ms): " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in result["cost"].items()))  # fmt: skip
    for k, c in result["digits_no_stream"].items():
        print(f"  digits {k}: auto {c['auto'][0]:.1f}+-{c['auto'][1]:.1f}  LR {c['lr'][0]:.1f}+-{c['lr'][1]:.1f}")


if __name__ == "__main__":
    main()
