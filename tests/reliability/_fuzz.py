"""Hypothesis fuzz targets: each names the ONLY exceptions its function documents; anything else is counted.

``run_target`` never raises on a finding (so a stress run can count them all); tests assert the count is 0
and print the first offending inputs.
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tiny_bundles import TINY_SPEC

from edgetl_runtime.bundle.manifest import Manifest
from edgetl_runtime.bundle.reader import Bundle
from edgetl_runtime.errors import BundleError, ConfigError, InputError, StateError
from edgetl_runtime.images import as_image_list
from edgetl_runtime.preprocess import PreprocessSpec, preprocess_batch
from edgetl_runtime.state.store import FeatureStore

from ._support import write_tiny_bundle

# The documented exceptions of each fuzzed function, explicitly (not "any EdgeTLError").
DOCUMENTED: dict[str, tuple[type[BaseException], ...]] = {
    "bundle_open": (BundleError,),  # includes BundleIntegrityError
    "manifest_from_json": (BundleError,),
    "preprocess_spec_from_dict": (ConfigError,),
    "preprocess_batch": (InputError,),
    "as_image_list": (InputError,),
    "state_open": (StateError,),
    "npz_read": (BundleError,),
    "onnx_scan": (BundleError,),
}

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20,
)


@dataclass
class Fixture:
    """One tiny valid bundle and state, built once per run; each example mutates copies of their bytes."""

    folder: Path
    bundle: bytes
    manifest: dict[str, Any]
    state: bytes
    meta: dict[str, str]

    @classmethod
    def build(cls) -> Fixture:
        folder = Path(tempfile.mkdtemp(prefix="edgetl-fuzz-"))
        path = write_tiny_bundle(folder / "tiny.edgetl")
        with zipfile.ZipFile(path) as z:
            manifest = json.loads(z.read("manifest.json"))
        from edgetl_runtime.learner import Learner

        with Learner.load(path, folder / "state.db", backend="onnxruntime", head="ncm") as learner:
            learner.add([np.full((10, 12, 3), v, np.uint8) for v in (10, 200)], ["a", "b"])
            learner.save()
        con = sqlite3.connect(folder / "state.db")
        (digest, pre) = con.execute("SELECT model_digest, preprocess_key FROM models").fetchone()  # the one model
        meta = {"model_digest": str(digest), "preprocess_key": str(pre)}
        con.close()
        return cls(folder, path.read_bytes(), manifest, (folder / "state.db").read_bytes(), meta)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


_SURROGATES: tuple[Literal["Cs"]] = ("Cs",)


def _mutations(size: int) -> st.SearchStrategy[tuple[str, Any]]:
    flips = st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 255)), min_size=1, max_size=8)
    # zipfile cuts names at NUL and cannot encode lone surrogates: those are limits of the writer, not the reader
    names = st.text(
        st.characters(blacklist_categories=_SURROGATES, blacklist_characters="\x00"), min_size=1, max_size=12
    )
    members = st.dictionaries(names, st.binary(max_size=64), min_size=1, max_size=3)
    return st.one_of(
        st.tuples(st.just("flip"), flips),
        st.tuples(st.just("truncate"), st.integers(0, size - 1)),
        st.tuples(st.just("members"), members),
        st.tuples(
            st.just("manifest"),
            st.tuples(st.sampled_from(["backbone", "members", "preprocess", "precisions"]), json_values),
        ),
    )


def _mutated_bundle(fx: Fixture, mutation: tuple[str, Any]) -> bytes:
    kind, arg = mutation
    data = bytearray(fx.bundle)
    if kind == "flip":
        for pos, xor in arg:
            data[pos] ^= xor
        return bytes(data)
    if kind == "truncate":
        return bytes(data[:arg])
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(fx.bundle)) as zin, zipfile.ZipFile(buffer, "w") as zout:
        for info in zin.infolist():
            payload = zin.read(info)
            if kind == "manifest" and info.filename == "manifest.json":
                edited = {**fx.manifest, arg[0]: arg[1]}
                payload = json.dumps(edited).encode()
            zout.writestr(info.filename, payload)
        if kind == "members":
            for name, content in arg.items():
                zout.writestr(name, content)
    return buffer.getvalue()


def _bundle_open(fx: Fixture) -> tuple[st.SearchStrategy[Any], Callable[[Any], object]]:
    target = fx.folder / "mutant.edgetl"

    def call(data: bytes) -> None:
        target.write_bytes(data)
        bundle = Bundle.open(target)
        bundle.golden()
        bundle.head_arrays()

    # Mutating inside the strategy: a failure to build a mutant is a harness bug that raises, never a finding.
    return _mutations(len(fx.bundle)).map(lambda mutation: _mutated_bundle(fx, mutation)), call


def _manifest(fx: Fixture) -> tuple[st.SearchStrategy[Any], Callable[[Any], object]]:
    keys = st.sampled_from(sorted(fx.manifest))
    edited = st.builds(lambda k, v: json.dumps({**fx.manifest, k: v}), keys, json_values)
    raw = st.one_of(json_values.map(json.dumps), st.binary(max_size=64), st.text(max_size=64), edited)
    deep = st.integers(1, 5000).map(lambda n: "[" * n + "]" * n)
    return st.one_of(raw, deep), Manifest.from_json


def _spec(fx: Fixture) -> tuple[st.SearchStrategy[Any], Callable[[Any], object]]:
    keys = st.sampled_from(["input_size", "crop_pct", "interpolation", "mean", "std", "channel_order", "layout", "x"])
    numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**30), 10**30)
    values = json_values | st.lists(numbers, max_size=4) | numbers
    valid = TINY_SPEC.to_dict()
    one_off = st.builds(lambda k, v: {**valid, k: v}, keys, values)  # a valid spec with one field changed
    return st.dictionaries(keys, values, max_size=7) | st.just(valid) | one_off, PreprocessSpec.from_dict


_DTYPES = st.sampled_from(["u1", "i1", "u2", "i4", "i8", "f2", "f4", "f8", "b1", "c8", "U1", "O"])
_ARRAYS = hnp.arrays(_DTYPES, hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=6))
_SIDES = st.integers(1, 48)
_PLAUSIBLE = hnp.arrays("u1", st.tuples(_SIDES, _SIDES) | st.tuples(_SIDES, _SIDES, st.sampled_from([1, 2, 3, 4])))
_IMAGES = st.one_of(
    _ARRAYS,
    st.lists(_ARRAYS, max_size=3),
    st.lists(_PLAUSIBLE, max_size=3),  # mostly valid: odd sizes through the real resize path
    st.lists(json_values, max_size=3),
    json_scalars,
)


def _preprocess(fx: Fixture) -> tuple[st.SearchStrategy[Any], Callable[[Any], object]]:
    spec = TINY_SPEC
    return _IMAGES, lambda images: preprocess_batch(images, spec)


def _images(fx: Fixture) -> tuple[st.SearchStrategy[Any], Callable[[Any], object]]:
    return _IMAGES, as_image_list


def _state(fx: Fixture) -> tuple[st.SearchStrategy[Any], Callable[[Any], object]]:
    target = fx.folder / "mutant.db"
    flips = st.lists(st.tuples(st.integers(0, len(fx.state) - 1), st.integers(1, 255)), min_size=1, max_size=8)

    def call(mutation: list[tuple[int, int]]) -> None:
        data = bytearray(fx.state)
        for pos, xor in mutation:
            data[pos] ^= xor
        for side in ("-wal", "-shm"):
            Path(f"{target}{side}").unlink(missing_ok=True)
        target.write_bytes(bytes(data))
        meta = fx.meta
        with FeatureStore(
            target, model_digest=meta["model_digest"], feature_dim=16, preprocess_key=meta["preprocess_key"]
        ) as store:
            store.samples()
            store.images.samples_without_features()
            store.images.kept_pixels([key for _, _, key, _ in store.images.samples_without_features()] or ["none"])
            store.integrity_check()
            store.counts()
            store.storage()

    return flips, call


def _flipped(data: bytes) -> st.SearchStrategy[bytes]:
    """``data`` with a few bytes flipped, truncated, or with bytes inserted: mostly near-valid inputs."""
    size = len(data)

    def flip(edits: list[tuple[int, int]]) -> bytes:
        out = bytearray(data)
        for pos, xor in edits:
            out[pos % size] ^= xor
        return bytes(out)

    flips = st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 255)), min_size=1, max_size=8).map(flip)
    cuts = st.integers(0, size - 1).map(lambda n: data[:n])
    inserts = st.tuples(st.integers(0, size), st.binary(min_size=1, max_size=16)).map(
        lambda a: data[: a[0]] + a[1] + data[a[0] :]
    )
    return st.one_of(flips, cuts, inserts, st.just(data))


def _npz_read(fx: Fixture) -> tuple[st.SearchStrategy[Any], Callable[[Any], object]]:
    from edgetl_runtime.bundle.npz import expect_array, read_npz

    from . import _hostile as H

    valid = H.npz(H.golden_entries())
    descr = st.sampled_from(["<f4", ">f8", "|u1", "<i8", "<U3", "|O", "|S2", "<c8", "|b1", "<V4"])
    shapes = st.lists(st.integers(-2, 2**40), min_size=0, max_size=4).map(tuple)

    def entry(descr: str, shape: tuple[int, ...], size: int) -> bytes:
        header = {"descr": descr, "fortran_order": False, "shape": shape}
        return H.npz({"inputs.npy": H.npy((), header=header, data=bytes(size))})

    headers = st.builds(entry, descr, shapes, st.integers(0, 256))

    def call(data: bytes) -> None:
        read_npz(data, "golden.npz", lambda h: expect_array(h, "inputs", "f", (None, 3, 16, 16), required=False))

    return st.one_of(_flipped(valid), headers, st.binary(max_size=64)), call


def _onnx_scan(fx: Fixture) -> tuple[st.SearchStrategy[Any], Callable[[Any], object]]:
    from edgetl_runtime.bundle.onnx_scan import external_references

    from . import _hostile as H

    models = [H.onnx_model(), H.external_model("subgraph"), H.external_model("sparse")]
    return st.one_of(*(_flipped(m) for m in models), st.binary(max_size=64)), external_references


TARGETS: dict[str, Callable[[Fixture], tuple[st.SearchStrategy[Any], Callable[[Any], object]]]] = {
    "bundle_open": _bundle_open,
    "manifest_from_json": _manifest,
    "preprocess_spec_from_dict": _spec,
    "preprocess_batch": _preprocess,
    "as_image_list": _images,
    "state_open": _state,
    "npz_read": _npz_read,
    "onnx_scan": _onnx_scan,
}


def run_target(name: str, fx: Fixture, examples: int, rng_seed: int = 0) -> dict[str, Any]:
    """Run ``examples`` generated inputs through target ``name``; count ok / documented / undocumented."""
    strategy, call = TARGETS[name](fx)
    documented = DOCUMENTED[name]
    counts: dict[str, Any] = {"examples": 0, "ok": 0, "documented": 0, "undocumented": 0, "findings": []}

    @seed(rng_seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def fuzz(value: Any) -> None:
        counts["examples"] += 1
        try:
            call(value)
            counts["ok"] += 1
        except documented:
            counts["documented"] += 1
        except Exception as exc:  # the finding: an exception outside the documented set
            counts["undocumented"] += 1
            if len(counts["findings"]) < 5:
                counts["findings"].append(f"{type(exc).__name__}: {str(exc)[:200]} <- {repr(value)[:300]}")

    fuzz()
    return counts
