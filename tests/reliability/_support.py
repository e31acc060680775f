"""Shared reliability checks: each returns counts, so tests assert on them and benchmarks/stress.py sums them.

Importable both from pytest (``reliability._support``) and from ``benchmarks/stress.py`` (by file path).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from edgetl_runtime.learner import Learner

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CHILD = HERE / "_crash_child.py"
SIDE_FILES = ("-shm",)  # SQLite's WAL index: shared memory that readers also write; it holds no data


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def write_tiny_bundle(path: Path, **kwargs: Any) -> Path:
    """The tiny bundle builder of ``tests/tiny_bundles.py``."""
    from tiny_bundles import write_tiny_bundle as write

    return write(path, **kwargs)


def class_images(color: tuple[int, int, int], n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = np.array(color, dtype=np.int16)
    return [np.clip(base + rng.integers(-20, 21, size=(18, 22, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


COLORS = {"red": (220, 30, 30), "green": (30, 220, 30), "blue": (30, 30, 220), "gray": (128, 128, 128)}
RED, GREEN, BLUE = (class_images(COLORS[c], 3, i) for i, c in enumerate(("red", "green", "blue")))


def load_learner(bundle: Path, state: Path | None = None, **kw: Any) -> Learner:
    """The learner most reliability tests drive: onnxruntime backend, nearest-class-mean head."""
    from edgetl_runtime.learner import Learner

    return Learner.load(bundle, state, backend="onnxruntime", head="ncm", **kw)


# ---------------------------------------------------------------------------------------------- disk snapshots


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` -> sha256 of its bytes (the WAL index only by presence)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() or p.is_symlink():
            rel = str(p.relative_to(folder))
            side = p.name.endswith(SIDE_FILES) or p.is_symlink()
            out[rel] = "present" if side else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def sample_rows(db: Path) -> list[tuple[Any, ...]]:
    """(id, label, feature bytes) of every sample under every model it has features for, read with a plain
    sqlite3 connection."""
    con = sqlite3.connect(db)  # read-write: a read-only connection would leave -wal/-shm files behind
    try:
        return con.execute(
            "SELECT s.id, s.label, f.vec FROM samples s JOIN features f ON f.image = s.image ORDER BY s.id, f.model"
        ).fetchall()
    except sqlite3.DatabaseError as exc:  # a deliberately damaged state: its bytes are compared instead
        return [("unreadable", str(exc))]
    finally:
        con.close()


def state_problems(bundle: Path, state: Path) -> list[str]:
    """Reopen a state with the Learner, then SQLite's integrity_check and the store's own invariants."""
    from edgetl_runtime.errors import EdgeTLError
    from edgetl_runtime.learner import Learner

    problems: list[str] = []
    con = sqlite3.connect(state)
    try:
        problems += [f"sqlite: {r[0]}" for r in con.execute("PRAGMA integrity_check") if r[0] != "ok"]
    except sqlite3.Error as exc:
        problems.append(f"sqlite: {exc}")
    finally:
        con.close()
    try:
        with Learner.load(bundle, state, backend="onnxruntime", head="ncm") as learner:
            problems += learner.store.integrity_check()
    except EdgeTLError as exc:
        problems.append(f"reopen: {type(exc).__name__}: {exc}")
    return problems


# ---------------------------------------------------------------------------------------------- crash safety


def crash_trial(bundle: Path, state: Path, seed: int) -> dict[str, Any]:
    """Start a child enrolling in a loop, SIGKILL it at a random point, then account for every returned id.

    The seed picks when: ``seed % 4 == 0`` during start-up (schema creation, first add), ``== 1`` inside a
    ``remove`` (``seed % 8 == 5``: a ``remove(label=...)``, else by id; the child holds each remove's
    transaction open 20 ms after its DELETE, and the kill lands 2-15 ms after the remove is announced),
    otherwise at a random time after the first add.
    Returns counts: ``returned`` ids the child printed (its ``add`` had returned), ``lost`` of those
    missing or relabelled after reopen, ``corrupt`` 1 if the state fails to reopen or its checks,
    ``in_remove`` 1 if the child was killed between announcing a remove and reporting it done.
    """
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    early, aim_remove = seed % 4 == 0, seed % 4 == 1
    target = "XL " if seed % 8 == 5 else "X "
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(bundle), str(state), str(seed), *(["slow-remove"] if aim_remove else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    first = ""
    try:
        if early:
            time.sleep(rng.uniform(0.0, 1.5))
        else:
            while True:
                line = child.stdout.readline() if child.stdout else ""
                if not line:
                    raise RuntimeError(f"crash child died: {child.stderr.read() if child.stderr else ''}")
                first += line
                if not aim_remove or line.startswith(target):
                    break
            time.sleep(rng.uniform(0.002, 0.015) if aim_remove else rng.uniform(0.0, 0.6))
    finally:
        os.kill(child.pid, signal.SIGKILL)
    # Through the buffered readers readline used: communicate() reads the raw pipes and misses buffered lines.
    out = child.stdout.read() if child.stdout else ""
    err = child.stderr.read() if child.stderr else ""
    child.wait(timeout=30)
    if child.returncode != -signal.SIGKILL:
        raise RuntimeError(f"crash child exited by itself ({child.returncode}): {err[-2000:]}")
    lines = (first + out).split("\n")[:-1]  # text after the last newline may be a torn write
    return {**account(bundle, state, lines), "early": early, "aimed_remove": aim_remove}


def account(bundle: Path, state: Path, lines: list[str]) -> dict[str, Any]:
    """Check a killed child's state against what it printed (see ``_crash_child.py`` for the protocol)."""
    returned: dict[str, str] = {}
    intended, removed = set(), set()
    announced: dict[str, set[str]] = {}  # label -> ids a remove(label=...) in flight may take
    pending = 0
    for kind, *rest in (line.split(" ") for line in lines):
        if kind == "R":
            returned[rest[0]] = rest[1]
        elif kind == "X":
            intended.add(rest[0])  # remove() may have committed before the kill: absence is allowed
        elif kind == "D":
            removed.add(rest[0])  # remove() returned: the id must stay gone
        elif kind == "XL":
            announced[rest[0]] = {i for i, label in returned.items() if label == rest[0]} - removed
            intended |= announced[rest[0]]
        elif kind == "DL":
            removed |= announced.pop(rest[0])
        pending = int(kind in ("X", "XL")) if kind in ("X", "XL", "D", "DL") else pending
    result: dict[str, Any] = {"returned": len(returned), "removed": len(removed), "lost": 0, "resurrected": 0}
    result["in_remove"] = pending
    result.update(corrupt=0, problems=[], lines=lines)
    if not state.exists():
        return result
    problems = state_problems(bundle, state)
    if problems:
        result.update(corrupt=1, problems=problems[:5])
        return result
    present = {str(i): label for i, label, _ in sample_rows(state)}
    lost = [i for i, label in returned.items() if i not in intended and present.get(i) != label]
    back = [i for i in removed if i in present]
    result.update(lost=len(lost), resurrected=len(back), present=len(present))
    if lost or back:
        result["problems"] = [f"lost ids {lost[:10]}, resurrected ids {back[:10]}"]
    return result


# ---------------------------------------------------------------------------------------------- concurrency


def run_concurrency(
    bundle: Path, state: Path, seconds: float, predictors: int = 8, head: str = "ncm", enrol_pause: float = 0.0
) -> dict[str, Any]:
    """``predictors`` threads predict while one enrols for ``seconds``; returns counts of what went wrong.

    Labels only grow, so a prediction is torn if its label was never enrolled, or if a probability
    row does not sum to 1 or has fewer columns than the labels whose ``add`` had returned before the
    call, or more than the labels enrolled (or being enrolled) after it. At the end the head must know
    every enrolled label (a lost refit would leave one out).
    """
    from edgetl_runtime.learner import Learner

    learner = Learner.load(bundle, state, backend="onnxruntime", head=head)
    known: set[str] = {"red", "green"}  # labels whose add has started
    returned: set[str] = {"red", "green"}  # labels whose add has returned
    ids = learner.add(class_images(COLORS["red"], 2, 0), "red") + learner.add(
        class_images(COLORS["green"], 2, 1), "green"
    )
    lock = threading.Lock()
    stop = threading.Event()
    counts = {"predict_calls": 0, "proba_calls": 0, "torn": 0, "adds": 0}
    errors: list[str] = []
    probe = class_images(COLORS["red"], 2, 7) + class_images(COLORS["blue"], 1, 8)

    def bump(key: str, n: int = 1) -> None:
        with lock:
            counts[key] += n

    def enrol() -> None:
        i = 0
        try:
            while not stop.is_set():
                label = f"c{i // 10 % 20}" if i % 10 == 9 else list(COLORS)[i % 4]  # up to 24 labels
                with lock:
                    known.add(label)  # before add: a prediction may see it as soon as it commits
                new = learner.add(class_images(COLORS["gray"], 1, 100 + i), label)
                with lock:
                    ids.extend(new)
                    returned.add(label)
                bump("adds")
                i += 1
                time.sleep(enrol_pause)  # AutoHead refits cost O(N) leave-one-out: pace it to keep N bounded
        except BaseException as exc:  # reported, not swallowed
            errors.append(f"enrol: {type(exc).__name__}: {exc}")

    def predict(t: int) -> None:
        calls = 0
        try:
            while not stop.is_set():
                images = probe
                if head == "adaptive":  # new images each call: the head re-adapts while others predict and enrol
                    calls += 1
                    images = class_images(COLORS["red"], 1, 10_000 + 1000 * t + calls) + class_images(
                        COLORS["blue"], 1, 500_000 + 1000 * t + calls
                    )
                if t % 2:
                    labels = learner.predict(images)
                    with lock:
                        torn = any(str(v) not in known for v in labels)
                    bump("predict_calls")
                else:
                    with lock:
                        before = len(returned)
                    proba = learner.predict_proba(images)
                    with lock:
                        after = len(known)
                    rows_ok = np.allclose(proba.sum(axis=1), 1.0, atol=1e-6) and np.isfinite(proba).all()
                    torn = not rows_ok or not before <= proba.shape[1] <= after
                    bump("proba_calls")
                if torn:
                    bump("torn")
        except BaseException as exc:
            errors.append(f"predict {t}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=enrol)] + [
        threading.Thread(target=predict, args=(t,)) for t in range(predictors)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    errors += [f"{t.name} still running 120 s after stop" for t in threads if t.is_alive()]
    elapsed = time.perf_counter() - start
    store_ids = learner.store.samples()[0].tolist()
    problems = learner.store.integrity_check()
    if store_ids != sorted(ids) or len(set(ids)) != len(ids):
        problems.append(f"{len(store_ids)} samples in the store, {len(ids)} ids returned by add")
    if sorted(learner.classes_) != sorted(returned):
        problems.append(f"the head knows {len(learner.classes_)} classes, {len(returned)} were enrolled")
    seen = (learner.keeper.adaptation() or {}).get("seen", 0)  # the adaptive head's pool when it last refit
    learner.close()
    problems += state_problems(bundle, state)
    return {
        **counts,
        "threads": predictors + 1,
        "seconds": round(elapsed, 2),
        "samples": len(store_ids),
        "errors": errors[:10],
        "n_errors": len(errors),
        "corrupt": int(bool(problems)),
        "problems": problems[:5],
        "seen": seen,
    }


# ---------------------------------------------------------------------------------------------- peak memory

MEMORY_CHILD = HERE / "_memory_child.py"
MAX_REFUSED_GROWTH_MIB = 64


def refused_bundle_memory(bundle: Path, folder: Path) -> dict[str, Any]:
    """Open every bundle of ``_hostile.memory_corpus`` in one child; the growth of its peak RSS over a warm baseline.

    Returns ``{"rows": [{bundle, outcome, peak_mib, rss_mib, reset}], "worst", "worst_mib", "not_refused", "reset"}``.
    """
    from . import _hostile

    corpus = _hostile.memory_corpus(bundle, folder)
    args = [f"{name}={path}{'+add' if add else ''}" for name, (path, add) in corpus.items()]
    rows = _memory_child(bundle, args)
    worst = max(rows, key=lambda r: r["peak_mib"])
    refused = [r for r in rows if r["outcome"] != "loaded" and not r["outcome"].startswith("RAW")]
    return {"rows": rows, "worst": worst["bundle"], "worst_mib": worst["peak_mib"],
            "not_refused": len(rows) - len(refused), "reset": all(r["reset"] for r in rows)}  # fmt: skip


def _memory_child(bundle: Path, args: list[str]) -> list[dict[str, Any]]:
    import json

    done = subprocess.run(
        [sys.executable, str(MEMORY_CHILD), str(bundle), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory child failed ({done.returncode}): {done.stderr[-2000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def control_bomb_memory(bundle: Path, folder: Path) -> float:
    """Growth when the npz bomb's golden is read with np.load, as before round 2 (the meter must see it)."""
    from . import _hostile

    corpus = _hostile.memory_corpus(bundle, folder) if not (folder / "d.edgetl").exists() else None
    path = corpus["npz-deflate-256mib-entry"][0] if corpus else folder / "d.edgetl"
    rows = _memory_child(bundle, ["--control", str(path)])
    return float(rows[-1]["peak_mib"])
