"""The conditioning vector's way into the U-Net: a world model's actions and joint state, and the
learned "no action" that action dropout and guidance put in place of the actions.

The vector (B, D) is normalised with the training split's statistics (kept as buffers), projected
and added to the timestep's sinusoidal features before the time MLP (kitchen_lib.model.unet).
With `action_slice` (where the actions sit in the vector, for a net trained with action dropout)
the net also learns `null_actions`, a "no action" in the normalised space of that slice, which
replaces the actions of the rows inputs[NULL_ACTIONS] (B,) bool marks (kitchen_lib.model.guidance).
Without it (None) the net has no such parameter, so checkpoints of nets trained without dropout
load unchanged.

`VectorConditioning` is a base class, not a sub-module: its buffers and parameters live on the
network itself, so checkpoints keep their keys (`vector_mean`, `vector_std`, `vector_proj.*`,
`null_actions`).
"""

from __future__ import annotations

import torch
from torch import nn

from kitchen_lib.base.example import NULL_ACTIONS


class VectorConditioning(nn.Module):
    """The conditioning-vector path of a network: `_init_vector` in its constructor, `embed_vector`
    in its forward pass, `_check_vector` and `_check_null` on its inputs."""

    vector_dim: int
    action_slice: slice | None

    def _init_vector(self, vector_dim: int, emb_dim: int, action_slice: slice | None) -> None:
        """Register the vector's statistics, its projection to `emb_dim` features and, with
        `action_slice`, the learned "no action" (the order the checkpoints' keys have)."""
        self.vector_dim, self.action_slice = vector_dim, action_slice
        if action_slice is not None and not 0 <= action_slice.start < action_slice.stop <= vector_dim:
            raise ValueError(f"action_slice {action_slice} is not a part of the {vector_dim}-number vector")
        if vector_dim:
            self.register_buffer("vector_mean", torch.zeros(vector_dim))
            self.register_buffer("vector_std", torch.ones(vector_dim))
            # Not zero-initialised: the res blocks' zero-initialised outputs (or AdaGN layers)
            # already make the start unconditioned, and a second zero would stall its gradient.
            self.vector_proj = nn.Linear(vector_dim, emb_dim)
        # Zeros: the training split's mean action chunk, learned from there. Zeros draw nothing
        # from the RNG, so every other layer starts as it would without the parameter.
        self.register_parameter("null_actions", None if action_slice is None else
                                nn.Parameter(torch.zeros(action_slice.stop - action_slice.start)))

    def set_vector_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """The training split's mean and std of the conditioning vector (kept in the checkpoint)."""
        self.vector_mean.copy_(torch.as_tensor(mean))
        self.vector_std.copy_(torch.as_tensor(std))

    def embed_vector(self, vector: torch.Tensor, null: torch.Tensor | None) -> torch.Tensor:
        """(B, D) raw vectors -> (B, emb_dim) features to add to the time features; the actions of
        the rows `null` (B,) bool marks replaced by the learned "no action" (None: none are)."""
        v = (vector - self.vector_mean) / self.vector_std
        if null is not None:
            v = self._without_actions(v, null)
        return self.vector_proj(v)

    def _without_actions(self, v: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
        """(B, D) normalised vectors with the actions of the rows `null` (B,) marks replaced by
        the learned "no action"; the joint state untouched."""
        s = self.action_slice
        actions = torch.where(null[:, None], self.null_actions.to(v.dtype), v[:, s])  # (B, k*9)
        return torch.cat([v[:, :s.start], actions, v[:, s.stop:]], dim=1)

    def _check_vector(self, vector: torch.Tensor | None) -> None:
        if self.vector_dim and (vector is None or vector.shape[-1] != self.vector_dim):
            got = None if vector is None else tuple(vector.shape)
            raise ValueError(f"this model needs a conditioning vector (B, {self.vector_dim}); got {got}")

    def _check_null(self, null: torch.Tensor | None, batch: int) -> None:
        if null is not None:
            if self.null_actions is None:
                raise ValueError("this model has no learned 'no action' to drop actions for: it was built without "
                                 "action dropout (--action_dropout)")
            if null.dtype != torch.bool or null.shape != (batch,):
                raise ValueError(f"{NULL_ACTIONS} must be (B,) bool, one per row; got {null.dtype} {tuple(null.shape)}")
