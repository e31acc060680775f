"""The bundle manifest (format 1): what a host promises a device about the files it ships."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import PurePosixPath
from typing import Any

from edgetl_runtime.bundle.manifest_fields import field_problems
from edgetl_runtime.errors import BundleError, raise_all
from edgetl_runtime.preprocess import PreprocessSpec

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
GOLDEN_NAME = "golden.npz"
HEAD_NAME = "head.npz"


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    @property
    def member(self) -> str:
        """Archive name of the backbone model at this precision."""
        return f"backbone.{self.value}.onnx"


def member_name_problem(name: str) -> str | None:
    """Why ``name`` may not name a bundle member (absolute, escaping the archive, platform-specific), or None."""
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or name.startswith("/") or ".." in pure.parts or "\\" in name or ":" in name:
        return f"unsafe member name {name!r} (empty, absolute, escaping the archive, or with '\\' or ':')"
    return None


# Preference order when the device asks for the "best" precision available.
BEST_ORDER = (Precision.INT8, Precision.FP16, Precision.FP32)


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    timm_name: str
    weights: str
    feature_dim: int
    input_name: str = "images"
    output_name: str = "features"
    pooling: str = "avg"  # how the host pooled the final feature map (see edgetl.pooling)


@dataclass(frozen=True)
class MemberInfo:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """Everything a device needs to trust and use a bundle; serialised as ``manifest.json``."""

    backbone: BackboneInfo
    preprocess: PreprocessSpec
    members: dict[str, MemberInfo]
    precisions: tuple[Precision, ...] = (Precision.FP32,)
    quantization: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    head_labels: tuple[str, ...] = ()
    head: dict[str, Any] = field(default_factory=dict)  # a shipped head.npz: format, version, counts, accuracy
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    format_version: int = FORMAT_VERSION

    def model_member(self, precision: Precision) -> str:
        if precision not in self.precisions:
            have = [p.value for p in self.precisions]
            raise BundleError(f"This bundle has no {precision.value} model; it ships {have}. Re-export with it.")
        return precision.member

    def model_digest(self, precision: Precision) -> str:
        """SHA-256 of the model at ``precision``: features are only comparable under the same digest."""
        return self.members[self.model_member(precision)].sha256

    def known_models(self) -> dict[str, tuple[str, str]]:
        """Model digest -> (precision, backbone) of each precision: the models a state may have features of."""
        return {self.model_digest(p): (p.value, self.backbone.name) for p in self.precisions}

    def to_json(self) -> str:
        data = {
            "format_version": self.format_version,
            "backbone": vars(self.backbone),
            "preprocess": self.preprocess.to_dict(),
            "precisions": [p.value for p in self.precisions],
            "members": {name: vars(info) for name, info in sorted(self.members.items())},
            "quantization": self.quantization,
            "calibration": self.calibration,
            "validation": self.validation,
            "head_labels": list(self.head_labels),
            **({"head": self.head} if self.head else {}),
            "versions": self.versions,
            "created": self.created,
        }
        return json.dumps(data, indent=2, sort_keys=False, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and validate; every problem is reported at once, as a :class:`BundleError`."""
        try:
            data = json.loads(text, object_pairs_hook=unique_keys)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:  # deep nesting: RecursionError
            raise BundleError(
                f"manifest.json is not valid JSON ({exc}); the bundle is corrupt, re-export it."
            ) from None
        if not isinstance(data, dict):
            raise BundleError("manifest.json must hold a JSON object; the bundle is corrupt, re-export it.")
        version = data.get("format_version")
        if type(version) is not int or version != FORMAT_VERSION:  # true and 1.0 equal 1 in Python
            raise BundleError(
                f"Unsupported bundle format_version {version!r}; this edgetl-runtime reads format {FORMAT_VERSION}. "
                "Upgrade edgetl-runtime, or re-export the bundle with a matching edgetl."
            )
        try:
            return _parse(data)
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(
                f"manifest.json is malformed: {type(exc).__name__}: {exc}. Re-export the bundle."
            ) from None


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice: json.loads would keep the last silently, so two readers
    (or a reviewer and the device) could see different manifests in the same bytes."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BundleError(
                f"manifest.json gives the key {key[:80]!r} twice in one object; a manifest must be unambiguous. "
                "The bundle is corrupt or tampered with: re-export it."
            )
        out[key] = value
    return out


def _parse(data: dict[str, Any]) -> Manifest:
    problems: list[str] = []
    backbone = BackboneInfo(**data["backbone"])
    if type(backbone.feature_dim) is not int or backbone.feature_dim < 1:
        problems.append(f"backbone.feature_dim must be a positive integer, got {backbone.feature_dim!r}")
    members = {str(name): MemberInfo(**info) for name, info in dict(data["members"]).items()}
    for name, info in members.items():
        problems += [p for p in (member_name_problem(name),) if p]
        if not (isinstance(info.sha256, str) and len(info.sha256) == 64):
            problems.append(f"member {name!r} has no valid sha256")
        if type(info.size) is not int or info.size < 0:
            problems.append(f"member {name!r} has an invalid size {info.size!r}")
    precisions = tuple(Precision(p) for p in data["precisions"])
    problems += [
        f"precision {p.value} is listed but {p.member} is missing" for p in precisions if p.member not in members
    ]
    if Precision.FP32 not in precisions:  # the reference every device checks its backend against
        problems.append(f"precisions {[p.value for p in precisions]} lack fp32, which every bundle ships")
    problems += field_problems(data)  # host-written sections: the types their readers rely on
    raise_all(BundleError, problems, "manifest.json is inconsistent")
    return Manifest(
        backbone=backbone,
        preprocess=PreprocessSpec.from_dict(dict(data["preprocess"])),
        members=members,
        precisions=precisions,
        quantization=dict(data.get("quantization", {})),
        calibration=dict(data.get("calibration", {})),
        validation=dict(data.get("validation", {})),
        head_labels=tuple(str(v) for v in data.get("head_labels", [])),
        head=dict(data.get("head", {})),
        versions={str(k): str(v) for k, v in dict(data.get("versions", {})).items()},
        created=str(data.get("created", "")),
        format_version=int(data["format_version"]),
    )
