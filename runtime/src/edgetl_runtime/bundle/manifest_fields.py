"""Types of the manifest fields the host writes and people's tools read: the shipped head's summary, the int8
guard's verdict, the validation figures. ``edgetl inspect`` crashed on a hash-consistent bundle whose
``head.counts`` was a list or whose ``quantization.guard`` was a string (issue 24, item 13): these are checked
where the manifest is parsed, so every reader can trust them.

A spec maps a key to the types its value may have (``NUMBER``: int or float, never bool), or to a nested spec
for a JSON object. Keys a spec does not name are free (the host may add provenance).
"""

from __future__ import annotations

from typing import Any

NUMBER = "number"
PAIR = "pair"  # [low, high], two numbers
Spec = dict[str, Any]

_ACCURACY: Spec = {"top1": NUMBER, "images": int, "by_precision": {"*": NUMBER}}
_HEAD: Spec = {
    "format": str,
    "format_version": int,
    "labels": list,
    "counts": {"*": NUMBER},
    "alpha": NUMBER,
    "temperature": NUMBER,
    "kind": str,
    "class_weight": (str, type(None)),
    "power": NUMBER,
    "feature_dim": int,
    "max_factor_rows": int,
    "factor_dtype": str,
    "accuracy": (_ACCURACY, type(None)),
    "merged": {"samples_merged": int, "samples_in": int, "enrolments": list},
}
_GUARD: Spec = {
    "interval": PAIR,
    "confidence": NUMBER,
    "passed": bool,
    "drop": NUMBER,
    "max_drop": (NUMBER, type(None)),
    "cosine_mean": NUMBER,
    "min_cosine": (NUMBER, type(None)),
    "kind": str,
    "images": int,
}
_QUANTIZATION: Spec = {"guard": (_GUARD, type(None)), "nodes_to_exclude": list, "targets": list}
_CHECK: Spec = {
    key: (NUMBER, type(None))
    for key in (
        "size_ratio",
        "fp16_bytes",
        "fp32_bytes",
        "min_cosine",
        "cosine_min",
        "cosine_mean",
        "mean_cosine",
        "max_abs_diff",
        "accuracy_fp32",
        "accuracy_int8",
        "latency_int8_ms",
        "latency_fp32_ms",
    )
} | {"accuracy_delta": (NUMBER, type(None)), "excluded_nodes": list, "eval_count": (int, type(None))}
SECTIONS: Spec = {
    "head": _HEAD,
    "quantization": _QUANTIZATION,
    "validation": {"*": (_CHECK, str, NUMBER, list, bool, type(None))},
}


def field_problems(data: dict[str, Any]) -> list[str]:
    """Every manifest field whose value has a type its readers cannot use, as ``path: expected, got``."""
    problems: list[str] = []
    for section, spec in SECTIONS.items():
        if section in data:
            _check(data[section], spec, section, problems)
    return problems


def _matches(value: Any, kind: Any, path: str, problems: list[str]) -> bool:
    if kind == NUMBER:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == PAIR:
        return isinstance(value, list) and len(value) == 2 and all(_matches(v, NUMBER, path, problems) for v in value)
    if isinstance(kind, dict):
        if not isinstance(value, dict):
            return False
        _check(value, kind, path, problems)
        return True
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _check(value: Any, spec: Spec, path: str, problems: list[str]) -> None:
    if not isinstance(value, dict):
        problems.append(f"{path}: expected a JSON object, got {type(value).__name__}")
        return
    for key, item in value.items():
        kinds = spec.get(key, spec.get("*"))
        if kinds is None:
            continue
        options = kinds if isinstance(kinds, tuple) else (kinds,)
        if not any(_matches(item, kind, f"{path}.{key}", problems) for kind in options):
            names = ", ".join(_name(k) for k in options)
            problems.append(f"{path}.{key}: expected {names}, got {type(item).__name__}")


def _name(kind: Any) -> str:
    if kind == NUMBER:
        return "a number"
    if kind == PAIR:
        return "[low, high]"
    if isinstance(kind, dict):
        return "an object"
    return "null" if kind is type(None) else kind.__name__
