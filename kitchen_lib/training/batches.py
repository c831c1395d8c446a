"""The batches a run computes with, on its device: each epoch's training batches (this rank's
share, in the order run_state.epoch_order gives), the validation batches, and picked pairs.

`to_device` is the one place a batch moves to the device: the training step, validation, the
sample grid and the TensorBoard graph all get their batches from here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from kitchen_lib.training import distributed
from kitchen_lib.training.config import TrainConfig
from kitchen_lib.training.distributed import World
from kitchen_lib.training.run_state import epoch_order

Batch = dict[str, torch.Tensor]


def to_device(batch: Batch, device: torch.device) -> Batch:
    """A batch of the data sets' tensors, on `device`."""
    return {key: v.to(device) for key, v in batch.items()}


def epoch_batches(train_set: Dataset, tc: TrainConfig, world: World, epoch: int, start: int,
                  device: torch.device) -> Iterator[tuple[int, Batch]]:
    """(index, batch) of this rank's batches of an epoch, from batch `start` on (a resumed epoch)."""
    order = epoch_order(len(train_set), tc.seed, epoch)  # the same on every rank; each reads its share
    loader = DataLoader(train_set, batch_size=tc.batch_size, num_workers=tc.num_workers,
                        sampler=distributed.rank_indices(order, tc.batch_size, world))
    for i, batch in enumerate(loader):
        if i >= start:
            yield i, to_device(batch, device)


def val_batches(val_set: Dataset, tc: TrainConfig, world: World, device: torch.device) -> Iterator[tuple[int, Batch]]:
    """(index, batch) of the validation batches this rank scores (distributed.rank_val_batches)."""
    mine = distributed.rank_val_batches(len(val_set), max(tc.global_batch, 32), world)
    loader = DataLoader(val_set, batch_sampler=[items for _, items in mine])
    for (i, _), batch in zip(mine, loader, strict=True):
        yield i, to_device(batch, device)


def pick(dataset: Dataset, items: Sequence[int], device: torch.device) -> Batch:
    """Items `items` of a data set as one batch."""
    return to_device(default_collate([dataset[int(i)] for i in items]), device)
