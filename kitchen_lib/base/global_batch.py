"""Random draws for one rank's part of a global batch.

Under torchrun each rank holds a slice of the global batch. Drawing the timesteps and noise for
the whole global batch from the same seeded generator, then keeping one's own rows, gives every
rank exactly what one process with the global batch would draw (kitchen_lib.training.distributed).
"""

from __future__ import annotations

import torch


def global_shape(shape: torch.Size | tuple[int, ...], part: tuple[int, int]) -> tuple[int, ...]:
    """The shape of a draw for the whole global batch, of which a batch shaped `shape` is the
    part = (rank, world) of one rank."""
    rank, world = part
    if not 0 <= rank < world:
        raise ValueError(f"part must be (rank, world) with 0 <= rank < world (got {part})")
    return (shape[0] * world, *shape[1:])


def own_rows(full: torch.Tensor, part: tuple[int, int]) -> torch.Tensor:
    """A rank's rows of a draw made for the whole global batch. Every rank draws the same global
    tensor from the same seeded generator, so W ranks get the noise one process with the global
    batch would, and their generators stay in step. part=(0, 1) is the whole draw, as before."""
    rows = full.shape[0] // part[1]
    return full[part[0] * rows:(part[0] + 1) * rows]
