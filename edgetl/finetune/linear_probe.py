"""Linear probe: run the frozen backbone once per image, cache the features, train only a linear head.

Features use the eval transform (no augmentation), so they are a pure function of backbone, weights,
preprocessing and pixels; that tuple keys the optional on-disk ``.npz`` cache, and a second run on the
same data never touches the backbone. Each epoch then costs a matrix multiply instead of a CNN pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from edgetl.backbones import Backbone
from edgetl.datasets import ImageDataset
from edgetl.finetune import distributed as D
from edgetl.finetune.config import FinetuneConfig
from edgetl.finetune.data import TorchImageDataset, eval_loader
from edgetl.finetune.metrics import History
from edgetl.finetune.optim import build_optimizer, build_scheduler, head_groups
from edgetl.finetune.trainer import Evaluation, evaluate, fit, progress_iter
from edgetl_runtime.atomic import atomic_write

log = logging.getLogger("edgetl.finetune")


@dataclass
class Features:
    x: torch.Tensor  # (N, D) float32
    y: torch.Tensor  # (N,) int64


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 over parameter and buffer bytes: random-init and fine-tuned weights get distinct keys."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def data_fingerprint(data: ImageDataset) -> str:
    h = hashlib.sha256()
    images = [data.images] if isinstance(data.images, np.ndarray) else data.images
    for img in images:
        h.update(str(img.shape).encode())
        h.update(np.ascontiguousarray(img).tobytes())
    h.update(data.labels.tobytes())
    return h.hexdigest()


def cache_key(backbone: Backbone, data: ImageDataset, model_hash: str) -> str:
    parts = {"timm_name": backbone.timm_name, "weights": backbone.weights, "model": model_hash,
             "spec": backbone.spec.to_dict(), "data": data_fingerprint(data)}  # fmt: skip
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


@torch.no_grad()
def extract_features(backbone: Backbone, data: ImageDataset, config: FinetuneConfig, ctx: D.DistContext) -> Features:
    """Backbone features of every image, computed once (each rank does its round-robin share)."""
    model = backbone.model.to(ctx.device).eval()
    loader = eval_loader(TorchImageDataset(data, backbone.spec, augment=False), 2 * config.batch_size, ctx,
                         config.workers)  # fmt: skip
    desc = f"features ({len(data)} images)"
    chunks = [model(x.to(ctx.device)).float() for x, _ in progress_iter(loader, ctx, config.progress, desc)]
    local = torch.cat(chunks) if chunks else torch.zeros((0, backbone.feature_dim), device=ctx.device)
    x = D.gather_rows(local, len(data), ctx).cpu()
    return Features(x, torch.from_numpy(data.labels.copy()))


def cached_features(
    backbone: Backbone, data: ImageDataset, config: FinetuneConfig, ctx: D.DistContext, model_hash: str
) -> Features:
    """Features from ``config.feature_cache_dir`` when present there, else computed (and stored by rank 0)."""
    if config.feature_cache_dir is None:
        return extract_features(backbone, data, config, ctx)
    path = Path(config.feature_cache_dir) / f"features-{cache_key(backbone, data, model_hash)}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as npz:
            log.info("feature cache hit: %s", path)
            return Features(torch.from_numpy(npz["features"]), torch.from_numpy(npz["labels"]))
    feats = extract_features(backbone, data, config, ctx)
    if ctx.is_main:
        _save_npz(path, features=feats.x.numpy(), labels=feats.y.numpy())
    return feats


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_write(path) as fh:
        np.savez(fh, **cast(dict[str, Any], arrays))


def _loader(feats: Features, batch_size: int, shuffle: bool, seed: int) -> DataLoader[tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(feats.x, feats.y), batch_size=batch_size, shuffle=shuffle, generator=generator)


@dataclass
class ProbeOutcome:
    history: History
    test: Evaluation | None
    feature_seconds: float


def run_linear_probe(
    backbone: Backbone, head: nn.Linear, splits: dict[str, ImageDataset | None], config: FinetuneConfig,
    ctx: D.DistContext, on_best: Callable[[int, History], None] | None = None,
) -> ProbeOutcome:  # fmt: skip
    """Extract features once per split, then fit ``head`` on them (identically on every rank)."""
    start = time.perf_counter()
    model_hash = model_fingerprint(backbone.model) if config.feature_cache_dir else ""
    feats = {k: cached_features(backbone, v, config, ctx, model_hash) for k, v in splits.items() if v is not None}
    feature_seconds = time.perf_counter() - start
    if ctx.is_main:
        log.info("features for %s ready in %.1fs", sorted(feats), feature_seconds)
    local = ctx.local()  # every rank holds all features: train the tiny head redundantly, no communication
    head.to(local.device)
    train = _loader(feats["train"], config.batch_size, True, config.seed)
    val = _loader(feats["val"], 4 * config.batch_size, False, 0) if "val" in feats else None
    optimizer = build_optimizer(head_groups(head, config), config)
    scheduler = build_scheduler(optimizer, config, len(train))
    n_classes = head.out_features
    history = fit(head, train, val, n_classes, optimizer, scheduler, config, local, on_best=on_best)
    test = None
    if "test" in feats:
        test = evaluate(head, _loader(feats["test"], 4 * config.batch_size, False, 0), n_classes, local)
    return ProbeOutcome(history, test, feature_seconds)
