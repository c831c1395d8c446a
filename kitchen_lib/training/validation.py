"""What a run measures on its validation episodes while it trains: the EMA model's loss (which
picks best.pt and catches divergence) and a grid of its predictions (for TensorBoard)."""

from __future__ import annotations

import numpy as np
import torch

from kitchen_lib.base.images import image_grid, to_image
from kitchen_lib.data.examples import ExampleSet
from kitchen_lib.data.pairs import spread
from kitchen_lib.model.frame_model import FrameModel
from kitchen_lib.model.samplers import SamplerConfig
from kitchen_lib.training import batches, distributed, run_state
from kitchen_lib.training.config import TrainConfig
from kitchen_lib.training.distributed import World


@torch.no_grad()
def validation_loss(model: FrameModel, val_set: ExampleSet, tc: TrainConfig, world: World, device: torch.device,
                    autocast_dtype: torch.dtype | None = None) -> float:
    """Mean loss of `model` (the EMA weights) on the validation pairs, with fixed noise. The batches
    are shared out among the ranks and summed; each draws its noise from its own seed, so the
    value does not depend on how many ranks there are."""
    model.eval()
    total, n = 0.0, 0
    for i, batch in batches.val_batches(val_set, tc, world, device):
        g = torch.Generator(device=device).manual_seed(run_state.val_noise_seed(tc.seed, i))
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = model.loss(batch, g)
        total += float(loss) * len(batch["current"])
        n += len(batch["current"])
    total, n = distributed.all_sum(world, [total, n], device)
    return total / max(n, 1)


@torch.no_grad()
def sample_grid(model: FrameModel, val_set: ExampleSet, sampler: SamplerConfig, device: torch.device,
                n: int = 4) -> np.ndarray:
    """Rows of current | predicted (`sampler`, seed 0) | actual for n fixed validation pairs."""
    batch = batches.pick(val_set, spread(np.arange(len(val_set)), n, "the validation set"), device)
    g = torch.Generator(device=device).manual_seed(0)
    pred = model.eval().predict(batch, sampler, g)
    return image_grid([list(row) for row in zip(*(to_image(x) for x in (batch["current"], pred, batch["future"])),
                                                 strict=True)])
