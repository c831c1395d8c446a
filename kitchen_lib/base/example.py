"""One example: what a model is given, defined once for training, evaluation, the demo and rollouts.

An example is a dict. As the pairs cache gives it (uint8 frames, `kitchen_lib.data.examples`):

    current  (B, H, W, C) uint8      the frame at step t
    context  (B, N, H, W, C) uint8   a world model's N earlier frames, oldest first (absent for N = 0)
    vector   (B, D) float32          a world model's conditioning vector, raw (absent for D = 0)
    future   (B, H, W, C) uint8      the frame at step t + k: the target, present in training

and as the network takes it (`to_tensors`): frames float (B, C, H, W) in [-1, 1], the context
stacked on the channel axis, (B, N*C, H, W). The network is called `net(x_t, t, inputs)` with the
inputs only (`inputs_of`): it never sees the target.

The model itself may add one more input, never part of an example: NULL_ACTIONS, (B,) bool, the
rows whose actions the network replaces by its learned "no action" (action dropout in training,
the unconditioned half of guidance: kitchen_lib.model.guidance).
"""

from __future__ import annotations

import numpy as np
import torch

from kitchen_lib.base.images import to_tensor

INPUTS = ("current", "context", "vector")  # what the network is given
TARGET = "future"  # what it learns to predict
NULL_ACTIONS = "null_actions"  # set by the model, not the data: rows to see without their actions


def to_tensors(example: dict[str, np.ndarray], device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """uint8 frames and a float vector (as gathered from a cache) -> the network's tensors, on `device`."""
    out = {}
    for key, value in example.items():
        if key in ("current", TARGET):
            out[key] = to_tensor(value)  # (B, H, W, C) -> (B, C, H, W)
        elif key == "context":
            out[key] = to_tensor(value).flatten(1, 2)  # (B, N, H, W, C) -> (B, N, C, H, W) -> (B, N*C, H, W)
        elif key == "vector":
            out[key] = torch.as_tensor(np.asarray(value), dtype=torch.float32)
    return to_device(out, device) if device is not None else out


def to_device(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    """Every tensor of a batch on `device`: the one place a batch is moved."""
    return {key: v.to(device) for key, v in batch.items()}


def inputs_of(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The network's inputs of an example or batch: everything but the target."""
    return {key: v for key, v in batch.items() if key in INPUTS}


def batch_size(example: dict) -> int:
    return len(example["current"])
