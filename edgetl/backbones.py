"""Backbone registry over timm: names, weights, and the preprocessing each one was trained with."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import timm
import torch
from torch import nn

from edgetl.weights import (
    WeightsSource,
    WeightsSpec,
    bundled_checkpoint,
    load_by_name,
    load_positional,
    read_state_dict,
)
from edgetl_runtime.errors import CheckpointError, ConfigError, UnknownBackboneError
from edgetl_runtime.preprocess import Interpolation, PreprocessSpec

# Short names for the backbones edgetl is built around; any other timm name works too.
ALIASES: dict[str, str] = {
    "mobilenetv2": "mobilenetv2_100",
    "mobilenetv3_large": "mobilenetv3_large_100",
    "mobilenetv3_small": "mobilenetv3_small_100",
    "efficientnet_b0": "efficientnet_b0",
    "efficientnet_lite0": "efficientnet_lite0",
    "tf_efficientnet_lite0": "tf_efficientnet_lite0",
    "tf_efficientnet_lite1": "tf_efficientnet_lite1",
    "tf_efficientnet_lite2": "tf_efficientnet_lite2",
}
FINETUNED_CONFIG = "edgetl_config.json"
FINETUNED_WEIGHTS = "model.safetensors"


@dataclass
class Backbone:
    """A timm feature extractor (``num_classes=0``) with what the rest of the pipeline must know."""

    name: str
    timm_name: str
    model: nn.Module
    spec: PreprocessSpec
    feature_dim: int
    weights: str
    classes: list[str] = field(default_factory=list)
    head: nn.Linear | None = None  # the fine-tuned classifier, when loaded from a fine-tune run
    training_data: dict[str, object] | None = None  # a fine-tune run's data record: export calibrates on it

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(N, feature_dim)`` for a preprocessed batch ``(N, 3, H, W)``."""
        features: torch.Tensor = self.model(x)
        return features


def available_backbones() -> list[str]:
    """The short names edgetl registers (every other timm model name is accepted as well)."""
    return sorted(ALIASES)


def resolve_name(name: str) -> str:
    """Registry alias or timm name -> timm architecture name, suggesting close matches on typos."""
    if name in ALIASES:
        return ALIASES[name]
    if name in timm.list_models():
        return name
    if "/" in name or "\\" in name or name.startswith("."):  # a path, not a model name
        raise ConfigError(
            f"{name} does not exist: no such `edgetl finetune` run folder or checkpoint file. Fix: check the path "
            "(the folder given to `edgetl finetune -o`), or pass a model name such as tf_efficientnet_lite0."
        )
    candidates = sorted(set(ALIASES) | set(timm.list_models()))
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownBackboneError(
        f"Unknown backbone {name!r}.{hint} edgetl registers {available_backbones()}; "
        "any name from timm.list_models() works too."
    )


def create_backbone(
    name: str | Path,
    weights: str | Path | WeightsSpec = "none",
    *,
    num_classes: int = 0,
    image_size: int | None = None,
) -> Backbone:
    """Build a backbone by registry/timm name, or load a fine-tuned run directory.

    Args:
        name: registry alias, timm model name, or a directory written by ``edgetl finetune`` (or the
            checkpoint file inside it).
        weights: ``bundled`` (offline ImageNet weights), ``hub`` (timm ``pretrained=True``),
            ``none`` (random init), or a checkpoint path (.safetensors, or .pt/.pth read with
            ``weights_only=True``).
        num_classes: 0 for a feature extractor; 1000 keeps the ImageNet classifier.
        image_size: override the square input resolution of the preprocessing spec.
    """
    if Path(name).is_dir():
        return load_finetuned(Path(name), image_size=image_size)
    if Path(name).is_file():  # a run's checkpoint file: its folder holds the config that rebuilds it
        if Path(name).name == FINETUNED_WEIGHTS and (Path(name).parent / FINETUNED_CONFIG).is_file():
            return load_finetuned(Path(name).parent, image_size=image_size)
        raise ConfigError(
            f"{name} is a file but not the {FINETUNED_WEIGHTS} of an `edgetl finetune` run folder. "
            "Fix: pass the model name and the checkpoint as weights, e.g. `edgetl export mobilenetv3_large_100 "
            f"--weights {name} ...`."
        )
    timm_name = resolve_name(str(name))
    spec = WeightsSpec.parse(weights)
    if spec.source is WeightsSource.HUB:
        model = _hub_model(timm_name, num_classes)
    elif spec.source is WeightsSource.BUNDLED:
        path = bundled_checkpoint(timm_name)
        model = timm.create_model(timm_name, pretrained=False)
        load_positional(model, read_state_dict(path), str(path))
        if num_classes != model.num_classes:  # keep the real ImageNet classifier when it is asked for
            cast(Any, model).reset_classifier(num_classes)  # timm's method, not declared by nn.Module
    else:
        model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes)
        if spec.source is WeightsSource.PATH:
            assert spec.path is not None
            load_by_name(model, read_state_dict(spec.path), str(spec.path))
    model.eval()
    preprocess = exportable_default(preprocess_spec_for(model), model)
    if image_size is not None:
        check_image_size(model, timm_name, image_size)
        preprocess = preprocess.with_size(image_size)
    return Backbone(str(name), timm_name, model, preprocess, pooled_dim(model), spec.describe())


STRIDE = 32  # every registered backbone downsamples by 32


def check_image_size(model: nn.Module, timm_name: str, size: int) -> None:
    """Refuse, before any training, a size the exported model could not reproduce.

    TF "same" padding (timm's ``tf_*`` models: ``Conv2dSame`` ...) pads by the input size; it traces
    into ONNX exactly only at multiples of the network stride, so another size trains fine and then
    fails the export's parity check.
    """
    if size % STRIDE and _has_same_padding(model):
        lower, upper = max(STRIDE, size // STRIDE * STRIDE), (size // STRIDE + 1) * STRIDE
        raise ConfigError(
            f"--image-size {size} does not suit {timm_name}: its TF 'same' padding exports exactly only at "
            f"multiples of {STRIDE}. Fix: use {lower} or {upper}, or a symmetric-padding model (e.g. "
            f"{timm_name.removeprefix('tf_')})."
        )


def _has_same_padding(model: nn.Module) -> bool:
    return any(type(m).__name__.endswith("Same") for m in model.modules())


def exportable_default(spec: PreprocessSpec, model: nn.Module) -> PreprocessSpec:
    """The model's own input size, rounded to the nearest multiple of the stride (ties down) where TF 'same'
    padding would not export exactly at it: tf_efficientnet_lite1 trains at 240 px -> 224, lite2 at 260 -> 256.

    Without this, exporting Lite1/Lite2 at their default size fails the ONNX parity check.
    """
    height, width = spec.input_size
    if height != width or not height % STRIDE or not _has_same_padding(model):
        return spec
    lower = max(STRIDE, height // STRIDE * STRIDE)
    return spec.with_size(lower if height - lower <= lower + STRIDE - height else lower + STRIDE)


def _hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """Whether the Hugging Face hub answers a TCP connect within ``timeout`` (no retries), and why not."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False, "HF_HUB_OFFLINE is set"
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return False, f"{host}:{port} unreachable ({type(exc).__name__}: {exc})"
    return True, ""


def _hub_model(timm_name: str, num_classes: int) -> nn.Module:
    """timm ``pretrained=True``, failing fast with one line when the hub cannot be reached.

    Unreachable hub: only the local Hugging Face cache is tried (offline mode), so a cached model still
    loads and a missing one fails at once instead of after a minute of retries.
    """
    from unittest import mock

    from huggingface_hub import constants

    reachable, why = _hub_reachable()
    offline = mock.patch.object(constants, "HF_HUB_OFFLINE", True) if not reachable else mock.patch.dict({})
    try:
        with offline:
            return timm.create_model(timm_name, pretrained=True, num_classes=num_classes)
    except Exception as exc:  # hub, network, cache and format errors all mean: no hub weights
        where = f"the hub is unreachable ({why}) and they are not in the local cache" if not reachable else str(exc)
        where = where.splitlines()[0][:300] if where.strip() else type(exc).__name__
        raise CheckpointError(
            f"--weights hub could not load {timm_name}: {where}. "
            "Fix: connect to huggingface.co (or set HF_ENDPOINT to a mirror), or use --weights bundled, "
            "a local checkpoint path, or --weights none."
        ) from exc


def pooled_dim(model: nn.Module) -> int:
    """Width of the pooled features a ``num_classes=0`` model returns (MobileNetV3 adds a 1280-d conv head)."""
    width: Any = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", 0)
    return int(width)


def preprocess_spec_for(model: nn.Module) -> PreprocessSpec:
    """timm's data config for ``model`` as an edgetl :class:`PreprocessSpec`."""
    cfg: dict[str, Any] = timm.data.resolve_model_data_config(model)  # type: ignore[attr-defined,no-untyped-call]
    return PreprocessSpec(
        input_size=tuple(cfg["input_size"][1:]),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        interpolation=Interpolation("bicubic" if cfg.get("interpolation") == "bicubic" else "bilinear"),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
    )


def load_finetuned(run_dir: Path, image_size: int | None = None) -> Backbone:
    """Rebuild a backbone (and its fine-tuned classifier) from an ``edgetl finetune`` output directory."""
    cfg_path, weights_path = run_dir / FINETUNED_CONFIG, run_dir / FINETUNED_WEIGHTS
    if not cfg_path.is_file() or not weights_path.is_file():
        raise CheckpointError(
            f"{run_dir} is not a fine-tuned checkpoint: expected {FINETUNED_CONFIG} and {FINETUNED_WEIGHTS} inside. "
            "Pass the --output directory of `edgetl finetune`."
        )
    try:
        cfg = json.loads(cfg_path.read_text())
        timm_name, classes = cfg["timm_name"], list(cfg["classes"])
        spec = PreprocessSpec.from_dict(cfg["preprocess"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{cfg_path} is corrupt or from another tool: {exc}") from exc
    state = read_state_dict(weights_path)
    model = timm.create_model(timm_name, pretrained=False, num_classes=0)
    load_by_name(
        model,
        {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")},
        str(weights_path),
    )
    head = nn.Linear(pooled_dim(model), len(classes))
    head.load_state_dict({k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")})
    model.eval()
    head.eval()
    if image_size is not None:
        check_image_size(model, timm_name, image_size)
        spec = spec.with_size(image_size)
    weights = f"finetuned:{run_dir}"
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else None
    name = str(cfg.get("name", timm_name))
    return Backbone(name, timm_name, model, spec, pooled_dim(model), weights, classes, head, data)
