"""Write a fine-tuned model exactly as :func:`edgetl.backbones.load_finetuned` reads it — atomically, never pickled.

``model.safetensors`` holds ``backbone.<name>`` tensors for the timm feature extractor and
``head.weight`` / ``head.bias`` for the classifier; ``edgetl_config.json`` says how to rebuild it.
Each file is written to a temp file in the same folder, fsynced, then ``os.replace``d, so a crash
never leaves a half-written checkpoint where a good one was.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from edgetl.backbones import FINETUNED_CONFIG, FINETUNED_WEIGHTS, Backbone
from edgetl.finetune.config import FinetuneConfig
from edgetl_runtime.atomic import atomic_write


def write_atomic(path: Path, payload: bytes) -> None:
    """Replace ``path`` with ``payload`` all at once (temp file + fsync + rename)."""
    with atomic_write(path) as fh:
        fh.write(payload)


def checkpoint_tensors(model: nn.Module, head: nn.Linear) -> dict[str, torch.Tensor]:
    """Flat ``backbone.*`` + ``head.*`` state (contiguous CPU copies, as safetensors requires)."""
    tensors = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"head.{k}": v for k, v in head.state_dict().items()})
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def save_checkpoint(
    output_dir: Path, backbone: Backbone, head: nn.Linear, classes: list[str], config: FinetuneConfig,
    metrics: dict[str, Any], provenance: dict[str, Any] | None = None,
) -> Path:  # fmt: skip
    """Write ``model.safetensors`` then ``edgetl_config.json`` (the config last: it marks a complete checkpoint)."""
    output_dir = Path(output_dir)
    meta = {"format": "edgetl-finetune", "timm_name": backbone.timm_name}
    write_atomic(output_dir / FINETUNED_WEIGHTS, safetensors_bytes(checkpoint_tensors(backbone.model, head), meta))
    cfg = {
        "name": backbone.name,
        "timm_name": backbone.timm_name,
        "classes": list(classes),
        "preprocess": backbone.spec.to_dict(),
        "weights": backbone.weights,
        "finetune": config.to_dict(),
        "metrics": metrics,
        **(provenance or {}),  # "data" (export calibrates on it) and "command" (finetune --config replays it)
    }
    write_atomic(output_dir / FINETUNED_CONFIG, (json.dumps(cfg, indent=2) + "\n").encode())
    return output_dir
