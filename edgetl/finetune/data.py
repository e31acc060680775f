"""Torch datasets and loaders over :class:`ImageDataset`, using the device's preprocessing spec."""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import cast

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from edgetl.datasets import ImageDataset
from edgetl.finetune.distributed import DistContext
from edgetl.transforms import eval_transform, to_tensor_uint8, train_transform
from edgetl_runtime.preprocess import PreprocessSpec


class TorchImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """Yields ``((3, H, W) float32, label)``: augmented for training, else exactly the device's eval path."""

    def __init__(self, data: ImageDataset, spec: PreprocessSpec, augment: bool) -> None:
        self.data = data
        self.spec = spec
        self.augment = augment

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = to_tensor_uint8(self.data.images[index])
        x = train_transform(image, self.spec) if self.augment else eval_transform(image, self.spec)
        return x, int(self.data.labels[index])


class ShardSampler(Sampler[int]):
    """Rank r evaluates items r, r+W, ... : every item exactly once, unlike DistributedSampler's padding."""

    def __init__(self, length: int, ctx: DistContext) -> None:
        self.indices = range(ctx.rank, length, ctx.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def train_loader(
    dataset: Dataset[tuple[torch.Tensor, int]], batch_size: int, ctx: DistContext, seed: int, workers: int = 0
) -> DataLoader[tuple[torch.Tensor, int]]:
    """Shuffled batches; under DDP each rank sees a disjoint shard (call ``sampler.set_epoch`` each epoch).

    The last short batch is dropped when there is more than one batch: a batch of one breaks BatchNorm
    at low resolution (1x1 feature maps) and adds a noisy step.
    """
    generator = torch.Generator().manual_seed(seed)
    sampler: Sampler[int]
    if ctx.enabled:
        sampler = DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=seed)
    else:
        sampler = RandomSampler(cast(Sized, dataset), generator=generator)  # our datasets define __len__
    drop_last = len(cast(Sized, sampler)) > batch_size
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=workers,
                      generator=generator, persistent_workers=workers > 0)  # fmt: skip


def eval_loader(
    dataset: Dataset[tuple[torch.Tensor, int]], batch_size: int, ctx: DistContext, workers: int = 0
) -> DataLoader[tuple[torch.Tensor, int]]:
    """Unshuffled batches of this rank's shard; reduce the sums over ranks afterwards."""
    sampler = ShardSampler(len(dataset), ctx)  # type: ignore[arg-type]
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers)
