"""fp16 with float32 I/O, checked against fp32 features; what fp16 cannot carry stays in fp32 automatically.

Two ways a model loses accuracy in fp16, handled in this order:

1. **Range.** A tensor beyond fp16's largest value (65504) becomes inf and poisons everything after it.
   The fp32 model is run on the check images first; every node producing or consuming a tensor above
   ``range_margin`` x 65504 is kept in fp32 from the start (``node_block_list``).
2. **Rounding.** Each fp16 activation is rounded to 11 significant bits. If the features still fall
   below ``min_cosine`` to fp32, nodes are ranked by the error they add (SQNR of their output against
   the fp32 model's same tensor, minus that of their inputs) and growing sets of the worst are kept in
   fp32 until the check passes, like the int8 guard does.

The converter wraps every kept node in Casts, so a tensor passing between two kept nodes would still
round-trip through fp16; :func:`fold_cast_pairs` removes those round trips.

Why ``min_cosine`` defaults to 0.995 and not 0.999: rounding every stored activation costs a few 1e-4
of cosine per layer, and a backbone fine-tuned with BatchNorm re-estimated on a narrow domain amplifies
it. tf_efficientnet_lite0 partially fine-tuned on Fashion-MNIST (96 px, 1 epoch) reaches a min cosine of
0.9981 over 32 images in plain fp16 (0.50x the fp32 size); holding 0.999 took 46 of its 93 nodes in
fp32 (0.73x) — close to shipping fp32 twice — for features that were already far closer to fp32 than
int8 ever is (0.95-0.99). A drift below 0.995 does indicate a real fp16 problem (overflow, cancellation).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetl_exporters.quantization.core import publish, workdir
from edgetl_exporters.quantization.measure import run_features
from edgetl_runtime.errors import ConfigError, QuantizationError, raise_all
from edgetl_runtime.numerics import row_cosine

FloatArray = npt.NDArray[np.float32]
FP16_MAX = 65504.0
PROBE_IMAGES = 4  # images whose every intermediate tensor is compared (memory: all activations of the net)


@dataclass(frozen=True)
class Fp16Config:
    """How the fp16 member is built and checked (``--fp16-min-cosine`` / ``--fp16-keep-ops`` on the CLI)."""

    min_cosine: float = 0.995  # worst per-image feature cosine to fp32 accepted (see the module docstring)
    keep_ops: tuple[str, ...] = ()  # op types always kept in fp32, added to the converter's default list
    keep_nodes: tuple[str, ...] = ()  # node names always kept in fp32
    auto_keep: bool = True  # keep out-of-range and most damaging nodes in fp32 until the check passes
    max_kept: int | None = None  # most nodes kept in fp32 by the search (None: half the graph)
    range_margin: float = 0.5  # fraction of fp16's max above which a tensor stays fp32

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep_ops", tuple(self.keep_ops))
        object.__setattr__(self, "keep_nodes", tuple(self.keep_nodes))
        problems = []
        if not 0 < self.min_cosine <= 1:
            problems.append(f"min_cosine must lie in (0, 1], got {self.min_cosine}")
        if self.max_kept is not None and self.max_kept < 0:
            problems.append(f"max_kept must be >= 0, got {self.max_kept}")
        if not 0 < self.range_margin <= 1:
            problems.append(f"range_margin must lie in (0, 1], got {self.range_margin}")
        raise_all(ConfigError, problems, "Invalid Fp16Config")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["keep_ops"], d["keep_nodes"] = list(self.keep_ops), list(self.keep_nodes)
        return d


@dataclass
class _Attempt:
    kept: list[str]
    cosine_mean: float
    cosine_min: float
    path: Path
    arguments: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {"kept_in_fp32": list(self.kept), "cosine_mean": self.cosine_mean, "cosine_min": self.cosine_min}


def _arguments(config: Fp16Config, kept: list[str]) -> dict[str, Any]:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    return {
        "min_positive_val": 5.96e-08,
        "max_finite_val": FP16_MAX,
        "keep_io_types": True,
        "disable_shape_infer": False,
        "op_block_list": list(dict.fromkeys([*DEFAULT_OP_BLOCK_LIST, *config.keep_ops])),
        "node_block_list": list(dict.fromkeys([*config.keep_nodes, *kept])),
        "force_fp16_initializers": False,
    }


def fold_cast_pairs(model: Any) -> int:
    """Remove fp32 -> fp16 -> fp32 Cast round trips the converter puts between two nodes kept in fp32.

    ``convert_float_to_float16`` wraps every blocked node in Casts, so a tensor passing from one kept
    node to the next still goes through fp16 (an out-of-range value still becomes inf). Consumers of
    such a round trip are rewired to the fp32 tensor; Casts left without consumers are dropped.
    Returns the number of round trips removed.
    """
    from onnx import TensorProto

    graph = model.graph
    producer = {t: n for n in graph.node for t in n.output}
    outputs = {o.name for o in graph.output}

    def cast_to(node: Any) -> int | None:
        if node.op_type != "Cast":
            return None
        return next((int(a.i) for a in node.attribute if a.name == "to"), None)

    rewire: dict[str, str] = {}
    for node in graph.node:
        first = producer.get(node.input[0]) if cast_to(node) == TensorProto.FLOAT and node.input else None
        if first is not None and cast_to(first) == TensorProto.FLOAT16 and node.output[0] not in outputs:
            source = producer.get(first.input[0])  # None: a graph input or initializer (float32 here)
            if source is None or cast_to(source) in (None, TensorProto.FLOAT):
                rewire[node.output[0]] = first.input[0]
    if not rewire:
        return 0
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rewire:
                node.input[i] = rewire[name]
    while True:  # drop Casts nobody reads any more
        used = {t for n in graph.node for t in n.input} | outputs
        dead = [n for n in graph.node if n.op_type == "Cast" and not (set(n.output) & used)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    return len(rewire)


def _float_tensors(model: Any) -> list[str]:
    """Names of the float32 intermediate tensors (node outputs that are not graph outputs)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    outputs = {o.name for o in model.graph.output}
    names = [t for n in model.graph.node for t in n.output if t and t not in outputs]
    return [t for t in names if types.get(t) == onnx.TensorProto.FLOAT]


def _intermediates(model: Any, names: list[str], images: FloatArray) -> dict[str, np.ndarray]:
    """Every tensor in ``names`` (cast to float32) for ``images``, by running ``model`` with them as outputs."""
    import onnx
    from onnx import TensorProto, helper

    from edgetl_runtime.backends.onnxruntime import make_session

    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    present = {t for n in augmented.graph.node for t in n.output}
    wanted = [t for t in names if t in present]
    for t in wanted:
        augmented.graph.node.append(helper.make_node("Cast", [t], [f"{t}__edgetl_f32"], to=TensorProto.FLOAT))
        augmented.graph.output.append(helper.make_tensor_value_info(f"{t}__edgetl_f32", TensorProto.FLOAT, None))
    session = make_session(augmented.SerializeToString(), threads=None)
    outs = session.run([f"{t}__edgetl_f32" for t in wanted], {session.get_inputs()[0].name: images})
    return dict(zip(wanted, outs, strict=True))


def _sqnr(ref: np.ndarray, test: np.ndarray) -> float:
    if not np.isfinite(test).all():
        return -math.inf
    a, b = ref.astype(np.float64).ravel(), test.astype(np.float64).ravel()
    signal, noise = max(float(np.linalg.norm(a)), 1e-12), max(float(np.linalg.norm(a - b)), 1e-12)
    return 20.0 * math.log10(signal / noise)


def out_of_range_nodes(model: Any, reference: dict[str, np.ndarray], margin: float) -> list[str]:
    """Nodes producing or consuming a tensor whose fp32 values exceed ``margin`` x fp16's max."""
    big = {t for t, v in reference.items() if v.size and float(np.abs(v).max()) > margin * FP16_MAX}
    return [n.name for n in model.graph.node if big & {*n.input, *n.output}]


def rank_damaging_nodes(model: Any, reference: dict[str, np.ndarray], fp16: dict[str, np.ndarray]) -> list[str]:
    """Nodes, most damaging first: SQNR against fp32 lost from a node's worst input to its output."""
    sqnr = {t: _sqnr(reference[t], fp16[t]) for t in reference if t in fp16}
    clean = max((v for v in sqnr.values() if math.isfinite(v)), default=0.0)
    scored = []
    for node in model.graph.node:
        outs = [sqnr[t] for t in node.output if t in sqnr]
        if not outs:
            continue
        worst_in = min((sqnr.get(t, clean) for t in node.input if t in sqnr), default=clean)
        out = min(outs)
        if not math.isfinite(worst_in):
            damage = -math.inf  # already broken upstream: the producer is to blame
        else:
            damage = math.inf if not math.isfinite(out) else worst_in - out
        scored.append((damage, node.name))
    scored.sort(key=lambda item: -item[0])
    return [name for damage, name in scored if damage > -math.inf]


def _sizes(n_candidates: int, cap: int) -> list[int]:
    cap = min(n_candidates, cap)
    return [*[k for k in (2**i for i in range(32)) if k < cap], cap] if cap > 0 else []


def convert_fp16(
    fp32_path: str | Path,
    out_path: str | Path,
    check_images: FloatArray | None = None,
    config: Fp16Config | None = None,
) -> dict[str, Any]:
    """fp16 weights and compute with float32 I/O (``keep_io_types``), so callers feed the same arrays.

    With ``check_images`` the fp16 features must keep ``config.min_cosine`` to fp32 on every image;
    nodes are kept in fp32 automatically until they do (see the module docstring), else
    :class:`QuantizationError` (its ``report`` lists every attempt) and nothing is written.
    Returns sizes, cosine stats, the converter's exact arguments and the nodes kept in fp32.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    config = config or Fp16Config()
    fp32_path = Path(fp32_path)
    source = onnx.load(str(fp32_path))
    report: dict[str, Any] = {
        "fp32_bytes": fp32_path.stat().st_size,
        "converter": "onnxruntime.transformers.float16.convert_float_to_float16",
        "config": config.to_dict(),
        "attempts": [],
    }
    with workdir(out_path) as tmp:

        def attempt(kept: list[str]) -> _Attempt:
            arguments = _arguments(config, kept)
            model = convert_float_to_float16(onnx.load(str(fp32_path)), **arguments)
            fold_cast_pairs(model)
            path = tmp / f"fp16_{len(report['attempts'])}.onnx"
            onnx.save(model, str(path))
            if check_images is None:
                return _Attempt(kept, math.nan, math.nan, path, arguments)
            got = run_features(path, check_images)
            cosine = row_cosine(reference, got) if np.isfinite(got).all() else np.full(1, -1.0)  # (N,)
            result = _Attempt(kept, float(cosine.mean()), float(cosine.min()), path, arguments)
            report["attempts"].append(result.record())
            return result

        reference = run_features(fp32_path, check_images) if check_images is not None else np.zeros((0, 0))
        kept: list[str] = []
        probe = None if check_images is None else check_images[:PROBE_IMAGES]
        names: list[str] = []
        fp32_acts: dict[str, np.ndarray] = {}
        if probe is not None and config.auto_keep:
            names = _float_tensors(source)
            fp32_acts = _intermediates(source, names, probe)
            kept = out_of_range_nodes(source, fp32_acts, config.range_margin)
        best = attempt(kept)
        if probe is not None and config.auto_keep and best.cosine_min < config.min_cosine:
            fp16_acts = _intermediates(onnx.load(str(best.path)), names, probe)
            ranked = [n for n in rank_damaging_nodes(source, fp32_acts, fp16_acts) if n not in kept]
            cap = len(source.graph.node) // 2 if config.max_kept is None else config.max_kept
            for k in _sizes(len(ranked), max(0, cap - len(kept))):
                best = attempt([*kept, *ranked[:k]])
                if best.cosine_min >= config.min_cosine:
                    break
        if check_images is not None:
            report.update(
                cosine_mean=best.cosine_mean,
                cosine_min=best.cosine_min,
                min_cosine=config.min_cosine,
                check_count=len(check_images),
            )
        report["arguments"] = best.arguments
        report["kept_in_fp32"] = [*config.keep_nodes, *best.kept]
        if check_images is not None and not best.cosine_min >= config.min_cosine:
            tried = ", ".join(f"{len(a['kept_in_fp32'])} kept -> {a['cosine_min']:.5f}" for a in report["attempts"])
            err = QuantizationError(
                f"fp16 features drift from fp32: min cosine {best.cosine_min:.5f} < {config.min_cosine} even with "
                f"nodes kept in fp32 ({tried}). Fix: accept more drift with --fp16-min-cosine (e.g. "
                f"{max(0.9, math.floor(best.cosine_min * 1000) / 1000)}), keep op types in fp32 with "
                "--fp16-keep-ops (e.g. Conv), or leave fp16 out of --precision"
            )
            err.report = report  # type: ignore[attr-defined]
            raise err
        publish(best.path, out_path)
    report["fp16_bytes"] = Path(out_path).stat().st_size
    return report
