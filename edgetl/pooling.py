"""How a backbone's final feature map becomes the exported feature vector.

``avg`` is timm's own pooled output (``forward_head(pre_logits=True)``). Grid pooling keeps coarse
spatial layout (``grid2`` = 2x2 average pooling of the final map, flattened), which helps few-shot
heads tell apart classes that differ in where things are. Blocks joined with ``+`` are each
L2-normalised so no block dominates by size alone.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgetl_runtime.errors import ConfigError

_BLOCK = re.compile(r"^(avg|grid([1-4]))$")


def parse_pooling(spec: str) -> tuple[str, ...]:
    """``"avg+grid2"`` -> ``("avg", "grid2")``, validated."""
    blocks = tuple(b.strip() for b in spec.split("+") if b.strip())
    bad = [b for b in blocks if not _BLOCK.match(b)]
    if not blocks or bad or len(set(blocks)) != len(blocks):
        raise ConfigError(
            f"Invalid pooling {spec!r}; use 'avg', 'grid2' (k in 1..4) or a '+'-joined set like 'avg+grid2'."
        )
    return blocks


class PooledFeatures(nn.Module):
    """A timm model (``num_classes=0``) whose output is the feature vector named by ``pooling``."""

    def __init__(self, model: nn.Module, pooling: str = "avg") -> None:
        super().__init__()
        self.model: Any = model  # timm's forward_features / forward_head, which nn.Module does not declare
        self.pooling = pooling
        self.blocks = parse_pooling(pooling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.blocks == ("avg",):
            pooled: torch.Tensor = self.model(x)  # (N, D): timm's pooled features, exactly as trained
            return pooled
        fmap: torch.Tensor = self.model.forward_features(x)  # (N, C, h, w)
        parts = [self._block(fmap, b) for b in self.blocks]
        if len(parts) == 1:
            return parts[0]
        return torch.cat([F.normalize(p, dim=1) for p in parts], dim=1)

    def _block(self, fmap: torch.Tensor, block: str) -> torch.Tensor:
        if block == "avg":
            head: torch.Tensor = self.model.forward_head(fmap, pre_logits=True)  # (N, D)
            return head
        return grid_pool(fmap, int(block[4:]))


def grid_pool(fmap: torch.Tensor, k: int) -> torch.Tensor:
    """``adaptive_avg_pool2d(fmap, k).flatten(1)`` written as slices + means.

    The ONNX exporter refuses adaptive pooling when k does not divide the map (7x7 -> 2x2); slices
    with the same (overlapping) bounds export everywhere and give identical numbers.
    """
    h, w = int(fmap.shape[2]), int(fmap.shape[3])
    cells = []
    for i in range(k):
        top, bottom = (i * h) // k, -(-(i + 1) * h // k)
        for j in range(k):
            left, right = (j * w) // k, -(-(j + 1) * w // k)
            cells.append(fmap[:, :, top:bottom, left:right].mean(dim=(2, 3)))  # (N, C)
    return torch.stack(cells, dim=2).flatten(1)  # (N, C * k * k), channel-major like adaptive pooling


def pooled_feature_dim(model: nn.Module, pooling: str, input_size: tuple[int, int]) -> int:
    """Length of the feature vector ``PooledFeatures(model, pooling)`` returns."""
    with torch.no_grad():
        return int(PooledFeatures(model, pooling).eval()(torch.zeros(1, 3, *input_size)).shape[1])
