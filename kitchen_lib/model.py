"""The model object: a network, the diffusion process, and the objective it is trained for.

Like DIAMOND's `Denoiser` or lucidrains' `GaussianDiffusion`, one object answers the two
questions every caller asks:

    model.loss(current, future)       the training loss on a batch (B, C, H, W) in [-1, 1]
    model.predict(current, sampler)   future frames from pure noise (or in one pass, for regression)

Two objectives share the network:
    diffusion   the network denoises; predicting runs a sampler (DDPM or DDIM) from pure noise.
    regression  the deterministic baseline: one pass at t = 0 straight to the future frame,
                trained with plain MSE. With a residual config its output is the change added
                to the current frame, as for residual diffusion.
"""

from __future__ import annotations

import torch
from torch import nn

from kitchen_lib.diffusion import Diffusion, DiffusionConfig, SamplerConfig
from kitchen_lib.unet import ConditionalUNet, UNetConfig

OBJECTIVES = ("diffusion", "regression")


class FrameModel(nn.Module):
    """Network + diffusion process + objective: predicts the frame k steps ahead."""

    def __init__(self, net: ConditionalUNet, diffusion: Diffusion, objective: str = "diffusion") -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}: choose one of {OBJECTIVES}")
        self.net, self.diffusion, self.objective = net, diffusion, objective

    @classmethod
    def build(cls, unet: UNetConfig, image_size: int, image_channels: int, diffusion: DiffusionConfig,
              objective: str = "diffusion") -> FrameModel:
        return cls(ConditionalUNet(unet, image_size, image_channels), Diffusion(diffusion), objective)

    def with_net(self, net: nn.Module) -> FrameModel:
        """The same process and objective around other weights (e.g. the EMA copy)."""
        return FrameModel(net, self.diffusion, self.objective)

    def loss(self, current: torch.Tensor, future: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean training loss of a batch; `generator` draws the timesteps and noise."""
        if self.objective == "regression":
            return torch.mean((self._regress(current).float() - future) ** 2)
        return self.diffusion.training_loss(self.net, future, current, generator=generator)

    @torch.no_grad()
    def predict(self, current: torch.Tensor, sampler: SamplerConfig | None = None,
                generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
        """(B, C, H, W) current frames in [-1, 1] -> predicted future frames, same shape and range."""
        if self.objective == "regression":
            return self._regress(current).clamp(-1, 1)  # deterministic: the sampler does not apply
        return self.diffusion.sample(self.net, current, sampler or SamplerConfig(), generator=generator, progress=progress)

    def network_calls(self, sampler: SamplerConfig) -> int:
        """Network passes one prediction costs."""
        return 1 if self.objective == "regression" else sampler.calls(self.diffusion.T)

    def _regress(self, current: torch.Tensor) -> torch.Tensor:
        t0 = torch.zeros(current.shape[0], dtype=torch.long, device=current.device)
        out = self.net(torch.zeros_like(current), t0, current)
        return current + out if self.diffusion.cfg.residual else out
