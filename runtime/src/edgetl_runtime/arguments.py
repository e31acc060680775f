"""What the public API accepts as a label, a sample id, a thread count, an enum value or a precision list,
checked once at the boundary.

A label is stored in SQLite and compared byte for byte, so two spellings of one class must not become
two classes and a value must read back exactly as it was written: hence one rule, enforced before
anything is stored and applied again to the labels used to look classes up.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from enum import Enum
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from edgetl_runtime.bundle.manifest import Precision
from edgetl_runtime.errors import ConfigError, InputError, raise_all
from edgetl_runtime.limits import MAX_CLASSES

E = TypeVar("E", bound=Enum)

MAX_LABEL_CHARS = 256
RESERVED_LABELS = ("unknown",)  # heads.base.UNKNOWN: what a rejected prediction is called
# Bidirectional embeddings, overrides, isolates and marks: 'cat\u202egnp.exe' prints as 'catexe.png'.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
LABEL_RULE = (
    f"a label is a non-empty str of at most {MAX_LABEL_CHARS} characters without control characters "
    "(U+0000-U+001F, U+007F-U+009F), bidirectional controls (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, "
    f"U+061C) or lone surrogates, other than {', '.join(map(repr, RESERVED_LABELS))} (reserved for rejected "
    "images); it is stored NFC-normalised"
)
MAX_SAMPLE_ID = 2**63 - 1  # SQLite INTEGER PRIMARY KEY range; ids start at 1
MAX_THREADS = 1024


def label_problem(value: object, *, lookup: bool = False) -> str | None:
    """Why ``value`` is not a label, or None. Non-str values are refused, never converted with ``str()``.

    ``lookup``: a label used to find stored samples (``remove``), which may predate the rules on reserved
    names and bidirectional controls: those are allowed, so such a class can still be removed.
    """
    if not isinstance(value, str):
        return f"{_short(value)} is of type {type(value).__name__}, not str"
    if not value:
        return "'' is empty"
    if len(value) > MAX_LABEL_CHARS:
        return f"{value[:20]!r}... has {len(value)} characters"
    bidi = () if lookup else BIDI_CONTROLS
    bad = sorted({c for c in value if unicodedata.category(c) in ("Cc", "Cs") or c in bidi})
    if bad:
        return f"{value!a} contains {', '.join(f'U+{ord(c):04X}' for c in bad[:5])}"
    if not lookup and unicodedata.normalize("NFC", value) in RESERVED_LABELS:
        return f"{value!r} is reserved for rejected images"
    return None


def usable_labels(labels: Sequence[str] | npt.NDArray[np.str_]) -> tuple[npt.NDArray[np.bool_], dict[str, int]]:
    """Which stored labels a head accepts, and how many samples of each refused one there are.

    A state written before a rule existed (or edited by hand) may hold such a label: its samples are left out
    with a warning instead of making every load fail.
    """
    names, inverse, counts = np.unique(np.asarray(labels, dtype=str), return_inverse=True, return_counts=True)
    ok = np.array([label_problem(str(n)) is None for n in names], dtype=bool)
    refused = {str(n): int(c) for n, c, good in zip(names, counts, ok, strict=True) if not good}
    return (ok[inverse.ravel()] if len(names) else np.zeros(0, dtype=bool)), refused


def check_label(value: object, what: str = "label", *, lookup: bool = False) -> str:
    """``value`` as a stored label (NFC), or an :class:`InputError` stating the rule (``lookup``: see
    :func:`label_problem`)."""
    problem = label_problem(value, lookup=lookup)
    if problem:
        raise InputError(f"Invalid {what}: {problem}; {LABEL_RULE}. Fix: pass such a str.")
    return unicodedata.normalize("NFC", str(value))


def check_labels(labels: object, count: int) -> list[str]:
    """One label per item: a str (for all ``count``) or a sequence / 1-D array of ``count`` labels."""
    if isinstance(labels, str):
        items: list[Any] = [labels] * count
    elif (isinstance(labels, np.ndarray) and labels.ndim == 1) or (
        isinstance(labels, Sequence) and not isinstance(labels, (bytes, bytearray))
    ):
        items = list(labels)
    else:
        raise InputError(
            f"Labels must be a str or a list of str, got {type(labels).__name__} {_short(labels)}. "
            f"Fix: pass one label per image, or one str; {LABEL_RULE}."
        )
    if len(items) != count:
        raise InputError(f"Got {count} images but {len(items)} labels; pass one label per image, or one str.")
    problems = [f"label #{i}: {p}" for i, p in enumerate(map(label_problem, items)) if p]
    raise_all(InputError, problems[:20], f"Invalid labels, {len(problems)} in all ({LABEL_RULE})")
    return [unicodedata.normalize("NFC", str(v)) for v in items]


def check_class_count(existing: Iterable[str], new: Iterable[str]) -> None:
    """Refuse an enrolment that would take a head past :data:`MAX_CLASSES` classes (before anything is stored)."""
    classes = set(existing) | set(new)
    if len(classes) > MAX_CLASSES:
        raise InputError(
            f"This enrolment would make {len(classes)} classes; a head holds at most {MAX_CLASSES} (its memory grows "
            "with classes x samples). Fix: remove classes you no longer need, or split them across bundles."
        )


def check_ids(ids: object) -> list[int]:
    """Sample ids as sorted distinct Python ints: a list/tuple/set of ints or a 1-D integer array."""
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise InputError(
                f"Sample ids must be a 1-D integer array, got dtype {ids.dtype} shape {ids.shape}. "
                "Fix: pass ids returned by add()."
            )
        values: list[Any] = ids.tolist()
    elif isinstance(ids, (list, tuple, set, frozenset)):
        values = list(ids)
    else:
        raise InputError(
            f"Sample ids must be a list of ints, got {type(ids).__name__} {_short(ids)}. "
            "Fix: pass a list such as [3, 7] (ids returned by add())."
        )
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, np.integer))]
    if bad:
        raise InputError(f"Sample ids must be ints, got {_short(bad[:10])}. Fix: pass ids returned by add().")
    out = sorted({int(v) for v in values})
    outside = [v for v in out if not 1 <= v <= MAX_SAMPLE_ID]
    if outside:
        raise InputError(
            f"Sample ids {_short(outside[:10])} are outside 1..2**63-1, the range of SQLite ids; no sample has them. "
            "Fix: pass ids returned by add()."
        )
    return out


def check_threads(threads: object) -> int | None:
    """``None`` (the backend's default) or an int in 1..:data:`MAX_THREADS`."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or not 1 <= threads <= MAX_THREADS:
        raise InputError(
            f"threads must be None or an int in 1..{MAX_THREADS}, got {_short(threads)}. "
            "Fix: pass the number of cores to use (os.cpu_count()), or None for the backend's default."
        )
    return int(threads)


def to_enum(enum: type[E], value: object, what: str, problems: list[str] | None = None) -> E:
    """``value`` as a member of ``enum``: a member, or its value in any letter case.

    An unknown value raises a :class:`ConfigError` naming the choices; with ``problems`` the message
    is appended there instead (validation that reports every problem at once) and ``value`` returned.
    """
    if isinstance(value, enum):
        return value
    try:
        return enum(str(value).lower())
    except ValueError:
        message = f"Unknown {what} {_short(value)}; choose one of {[e.value for e in enum]}"
        if problems is None:
            raise ConfigError(message + ".") from None
        problems.append(message)
        return value  # type: ignore[return-value]


def to_precisions(values: str | Iterable[str | Precision], what: str = "precision") -> tuple[Precision, ...]:
    """A comma list (``"fp32,int8"``) or sequence of precisions, deduplicated in order; unknown ones are a
    :class:`ConfigError` listing them."""
    items = [v.strip() for v in values.split(",") if v.strip()] if isinstance(values, str) else list(values)
    unknown = [v for v in items if str(getattr(v, "value", v)).lower() not in {p.value for p in Precision}]
    if unknown:
        raise ConfigError(f"Unknown {what}(s) {unknown}; choose from {', '.join(p.value for p in Precision)}.")
    return tuple(dict.fromkeys(to_enum(Precision, v, what) for v in items))


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
