"""The batches a run computes with, on its device: each epoch's training batches (this rank's
share, in the order run_state.epoch_order gives), the validation batches, and picked pairs.

The data sets give whole batches (kitchen_lib.data.examples.ExampleSet: `dataset[[i, j, ...]]`),
moved to the device by `kitchen_lib.base.example.to_device`, the one place a batch moves: the
training step, validation, the sample grid and the TensorBoard graph all get their batches here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset

from kitchen_lib.base.errors import UserError
from kitchen_lib.base.example import to_device
from kitchen_lib.training import distributed
from kitchen_lib.training.config import TrainConfig
from kitchen_lib.training.distributed import World
from kitchen_lib.training.run_state import epoch_order

Batch = dict[str, torch.Tensor]


def first_dataset_mask(train_set: Dataset) -> torch.Tensor:
    """(n,) bool: which training pairs come from the first of the joined datasets their cache was
    built from (what TrainConfig.first_dataset_share weighs against the rest)."""
    source, rows = getattr(train_set, "source", None), getattr(train_set, "rows", None)
    names = getattr(source, "datasets", None)
    if rows is None or names is None:
        raise UserError("--first_dataset_share needs training pairs read from a pairs cache")
    if len(names) < 2:
        raise UserError(f"--first_dataset_share weighs the first of joined datasets against the others, but "
                        f"{names[0]} is one dataset: join another with '+', or leave the share out")
    mask = torch.from_numpy(np.isin(rows[:, 0], source.episodes_of(names[0])))
    if mask.all() or not mask.any():
        some = "all" if mask.all() else "none"
        raise UserError(f"{some} of the training pairs come from {names[0]}: a share needs training pairs from both "
                        f"it and the others (give each dataset training episodes)")
    return mask


def epoch_batches(train_set: Dataset, tc: TrainConfig, world: World, epoch: int, start: int,
                  device: torch.device, first: torch.Tensor | None = None) -> Iterator[tuple[int, Batch]]:
    """(index, batch) of this rank's batches of an epoch, from batch `start` on (a resumed epoch);
    `first`: first_dataset_mask(train_set), when tc.first_dataset_share weighs the datasets."""
    # The same on every rank; each reads its share.
    order = epoch_order(len(train_set), tc.seed, epoch, first, tc.first_dataset_share)
    batches = list(BatchSampler(distributed.rank_indices(order, tc.batch_size, world), tc.batch_size, drop_last=False))
    # Its own generator: a loader draws a seed when it starts, and from the global RNG (dropout's) that
    # draw would come at the epoch's start in one run but at the resume point in a resumed one.
    seeds = torch.Generator().manual_seed(tc.seed * 1_000_003 + epoch)
    loader = DataLoader(train_set, batch_size=None, sampler=batches[start:], num_workers=tc.num_workers, generator=seeds)
    for i, batch in enumerate(loader, start):  # a resumed epoch skips its done batches without reading them
        yield i, to_device(batch, device)


def val_batches(val_set: Dataset, tc: TrainConfig, world: World, device: torch.device) -> Iterator[tuple[int, Batch]]:
    """(index, batch) of the validation batches this rank scores (distributed.rank_val_batches)."""
    mine = distributed.rank_val_batches(len(val_set), max(tc.global_batch, 32), world)
    # Its own generator, as for training: no draw from the global RNG (dropout's) at validation.
    loader = DataLoader(val_set, batch_size=None, sampler=[items for _, items in mine], generator=torch.Generator().manual_seed(0))
    for (i, _), batch in zip(mine, loader, strict=True):
        yield i, to_device(batch, device)


def pick(dataset: Dataset, items: Sequence[int], device: torch.device) -> Batch:
    """Items `items` of a data set as one batch."""
    return to_device(dataset[[int(i) for i in items]], device)
