"""The model object: a network, the diffusion process, and the objective it is trained for.

Like DIAMOND's `Denoiser` or lucidrains' `GaussianDiffusion`, one object answers the two
questions every caller asks, both about a batch of examples (kitchen_lib.base.example: a dict of
"current" (B, C, H, W) in [-1, 1] and, for a world model, "context" (B, N*C, H, W) and "vector"
(B, D); "future" too in training):

    model.loss(batch)                 the training loss on a batch
    model.predict(inputs, sampler)    future frames from pure noise (or in one pass, for regression)

Two objectives share the network:
    diffusion   the network denoises; predicting runs a sampler (DDPM or DDIM) from pure noise.
    regression  the deterministic baseline: one pass at t = 0 straight to the future frame,
                trained with plain MSE. With a residual config its output is the change added
                to the current frame, as for residual diffusion.

Trained with action dropout, a world model can be sampled with guidance on its actions
(`SamplerConfig.guidance`, kitchen_lib.model.guidance).
"""

from __future__ import annotations

import torch
from torch import nn

from kitchen_lib.base.example import NULL_ACTIONS, TARGET, inputs_of
from kitchen_lib.base.global_batch import global_shape, own_rows
from kitchen_lib.model.diffusion import Diffusion, DiffusionConfig
from kitchen_lib.model.guidance import check_guidance, dropped_actions, guided
from kitchen_lib.model.samplers import SamplerConfig
from kitchen_lib.model.unet import ConditionalUNet, UNetConfig

OBJECTIVES = ("diffusion", "regression")
# predict_x0's sampler: one DDIM step from pure noise at t = T-1 returns the network's x0 estimate.
X0_SAMPLER = SamplerConfig("ddim", 1)


class FrameModel(nn.Module):
    """Network + diffusion process + objective: predicts the frame k steps ahead."""

    def __init__(self, net: ConditionalUNet, diffusion: Diffusion, objective: str, context_noise: float,
                 action_dropout: float = 0.0) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}: choose one of {OBJECTIVES}")
        self.net, self.diffusion, self.objective, self.context_noise = net, diffusion, objective, context_noise
        self.action_dropout = action_dropout  # fraction of training pairs shown without their actions

    @classmethod
    def build(cls, unet: UNetConfig, image_size: int, image_channels: int, diffusion: DiffusionConfig,
              objective: str, context_frames: int, vector_dim: int, context_noise: float,
              action_dropout: float = 0.0, action_slice: slice | None = None) -> FrameModel:
        """`action_slice`: where the actions sit in the vector; needed when action_dropout > 0, whose
        net learns a "no action" for them (and only then, so other checkpoints load unchanged)."""
        if action_dropout > 0 and action_slice is None:
            raise ValueError("action dropout needs the actions' place in the vector (action_slice)")
        net = ConditionalUNet(unet, image_size, image_channels, context_frames=context_frames, vector_dim=vector_dim,
                              action_slice=action_slice if action_dropout > 0 else None)
        return cls(net, Diffusion(diffusion), objective, context_noise, action_dropout)

    def with_net(self, net: nn.Module) -> FrameModel:
        """The same process and objective around other weights (e.g. the EMA copy)."""
        return FrameModel(net, self.diffusion, self.objective, self.context_noise, self.action_dropout)

    def loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
             part: tuple[int, int] = (0, 1)) -> torch.Tensor:
        """Mean training loss of a batch; `generator` draws the timesteps and noise. part = (rank,
        world): the batch is one rank's slice of a global batch; every draw is made for the global
        batch and this rank takes its rows, as one process with the global batch would draw them."""
        inputs, future = inputs_of(batch), batch[TARGET]
        if "context" in inputs and self.context_noise > 0 and self.training:
            context = inputs["context"]
            noise = torch.randn(global_shape(context.shape, part), device=context.device, generator=generator)
            inputs = inputs | {"context": context + self.context_noise * own_rows(noise, part)}
        if self.action_dropout > 0 and self.training:  # not in validation: its loss is the conditioned model's
            null = dropped_actions(len(future), self.action_dropout, generator, part, future.device)
            inputs = inputs | {NULL_ACTIONS: null}
        if self.objective == "regression":
            return torch.mean((self._regress(inputs).float() - future) ** 2)
        return self.diffusion.training_loss(self.net, inputs, future, generator=generator, part=part)

    @torch.no_grad()
    def predict(self, inputs: dict[str, torch.Tensor], sampler: SamplerConfig,
                generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
        """A batch of inputs -> predicted future frames (B, C, H, W) in [-1, 1], with `sampler`
        (the caller's choice: a run's default is its config's, `Predictor.sampler`) and its
        guidance on the actions (UserError if this model cannot be guided: `check_sampler`)."""
        inputs = inputs_of(inputs)
        if self.objective == "regression":
            return self._regress(inputs).clamp(-1, 1)  # deterministic: the sampler does not apply
        net = guided(self.net, sampler.guidance)  # the net itself at guidance 1: today's sampler, bit for bit
        return sampler.build()(self.diffusion, net, inputs, generator=generator, progress=progress)

    def check_sampler(self, sampler: SamplerConfig) -> None:
        """Raise UserError unless this model can predict with `sampler` (guidance needs action dropout)."""
        sampler.validate()
        if self.objective == "diffusion":
            check_guidance(self.net, sampler.guidance)

    @torch.no_grad()
    def predict_x0(self, inputs: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """The network's one-step estimate of the future frame from pure noise (t = T-1): for an
        x0 model the conditional mean it has learnt, the blurriest and highest-PSNR guess."""
        return self.predict(inputs, X0_SAMPLER, generator)

    def network_calls(self, sampler: SamplerConfig) -> int:
        """Network passes one prediction costs."""
        return 1 if self.objective == "regression" else sampler.calls(self.diffusion.T)

    def _regress(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        current = inputs["current"]
        t0 = torch.zeros(current.shape[0], dtype=torch.long, device=current.device)
        out = self.net(torch.zeros_like(current), t0, inputs)
        return current + out if self.diffusion.cfg.residual else out
