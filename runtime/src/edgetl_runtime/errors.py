"""Typed errors shared by every edgetl package.

Each error subclasses :class:`EdgeTLError` and the builtin it refines, so callers can catch
``ValueError``/``FileNotFoundError`` as usual or all edgetl failures at once. Messages say what was
received, what was expected, and how to fix it.
"""

from __future__ import annotations

from collections.abc import Iterable


class EdgeTLError(Exception):
    """Base class of every error edgetl raises on purpose."""


class OptionalDependencyError(EdgeTLError, ImportError):
    """An optional dependency (torch, onnxruntime, tensorrt, ...) is not installed."""


class ConfigError(EdgeTLError, ValueError):
    """A configuration value is invalid."""


class InputError(EdgeTLError, ValueError):
    """Images, labels or arrays given by the caller are malformed."""


class DatasetError(EdgeTLError, ValueError):
    """A dataset is empty, unreadable or unsuitable for the requested operation."""


class UnknownBackboneError(EdgeTLError, KeyError):
    """A backbone name is not known to edgetl or timm."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class CheckpointError(EdgeTLError, ValueError):
    """A checkpoint is missing, corrupt or does not fit the model."""


class NotFittedError(EdgeTLError, AttributeError):
    """An estimator was used before ``fit``."""


class ExportError(EdgeTLError, RuntimeError):
    """Exporting a model failed."""


class ParityError(ExportError):
    """An exported model disagrees with its reference beyond tolerance."""


class QuantizationError(ExportError):
    """Quantization failed or could not meet its accuracy guard."""


class BundleError(EdgeTLError, ValueError):
    """A bundle file is malformed, tampered with or unsupported."""


class BundleIntegrityError(BundleError):
    """A bundle member does not match the SHA-256 recorded in its manifest."""


class EnrolmentError(BundleError):
    """An enrolment file (a device's exported samples) is malformed or unsupported."""


class EnrolmentIntegrityError(EnrolmentError, BundleIntegrityError):
    """An enrolment file member does not match the SHA-256 recorded in its manifest (tampered or truncated)."""


class EnrolmentMismatchError(EnrolmentError):
    """An enrolment file was made under another backbone, precision or preprocessing than the bundle given."""


class StateError(EdgeTLError, ValueError):
    """A device state database is corrupt or belongs to another bundle."""


class StateWriteError(StateError):
    """A healthy state database could not be written; nothing was committed and nothing is lost."""


class StateLockedError(StateWriteError):
    """Another connection held the state's write lock for longer than the busy timeout."""


class StateReadOnlyError(StateWriteError):
    """The state file (or its folder) is read-only: it can be read and predicted from, not enrolled into."""


class StateFullError(StateWriteError):
    """The disk (or SQLite's page limit) is full."""


class BackendError(EdgeTLError, RuntimeError):
    """An inference backend is unavailable or failed."""


class OutputError(EdgeTLError, OSError):
    """An output file cannot (or must not) be written: it is an input, exists already, or the file system
    refused it (full, read-only, a folder in the way). Nothing was written."""


def raise_all(error_type: type[EdgeTLError], problems: Iterable[str], header: str) -> None:
    """Raise one ``error_type`` listing every problem, or return if there are none.

    Validation collects all failures before raising, so a user fixes them in one pass.
    """
    items = list(problems)
    if items:
        body = "\n".join(f"  - {p}" for p in items)
        raise error_type(f"{header} ({len(items)} problem{'s' if len(items) > 1 else ''}):\n{body}")
