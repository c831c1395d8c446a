"""The model object: a network, the diffusion process, and the objective it is trained for.

Like DIAMOND's `Denoiser` or lucidrains' `GaussianDiffusion`, one object answers the two
questions every caller asks:

    model.loss(batch)                 the training loss on a batch: a dict of "current" and
                                      "future" (B, C, H, W) in [-1, 1], and, for a world model,
                                      "context" (B, N*C, H, W) and "vector" (B, D)
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

from kitchen_lib.base.global_batch import global_shape, own_rows
from kitchen_lib.model.diffusion import Diffusion, DiffusionConfig, SamplerConfig
from kitchen_lib.model.unet import ConditionalUNet, UNetConfig

OBJECTIVES = ("diffusion", "regression")


class FrameModel(nn.Module):
    """Network + diffusion process + objective: predicts the frame k steps ahead."""

    def __init__(self, net: ConditionalUNet, diffusion: Diffusion, objective: str = "diffusion",
                 context_noise: float = 0.0) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}: choose one of {OBJECTIVES}")
        self.net, self.diffusion, self.objective, self.context_noise = net, diffusion, objective, context_noise

    @classmethod
    def build(cls, unet: UNetConfig, image_size: int, image_channels: int, diffusion: DiffusionConfig,
              objective: str = "diffusion", context_frames: int = 0, vector_dim: int = 0,
              context_noise: float = 0.0) -> FrameModel:
        net = ConditionalUNet(unet, image_size, image_channels, context_frames, vector_dim)
        return cls(net, Diffusion(diffusion), objective, context_noise)

    def with_net(self, net: nn.Module) -> FrameModel:
        """The same process and objective around other weights (e.g. the EMA copy)."""
        return FrameModel(net, self.diffusion, self.objective, self.context_noise)

    def loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
             part: tuple[int, int] = (0, 1)) -> torch.Tensor:
        """Mean training loss of a batch; `generator` draws the timesteps and noise. part = (rank,
        world): the batch is one rank's slice of a global batch; every draw is made for the global
        batch and this rank takes its rows, as one process with the global batch would draw them."""
        current, future, context = batch["current"], batch["future"], batch.get("context")
        if context is not None and self.context_noise > 0 and self.training:
            noise = torch.randn(global_shape(context.shape, part), device=context.device, generator=generator)
            context = context + self.context_noise * own_rows(noise, part)
        denoiser = self._denoiser(context, batch.get("vector"))
        if self.objective == "regression":
            return torch.mean((self._regress(denoiser, current).float() - future) ** 2)
        return self.diffusion.training_loss(denoiser, future, current, generator=generator, part=part)

    @torch.no_grad()
    def predict(self, current: torch.Tensor, sampler: SamplerConfig | None = None,
                generator: torch.Generator | None = None, progress: bool = False,
                context: torch.Tensor | None = None, vector: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) current frames in [-1, 1] -> predicted future frames, same shape and range.
        A world model also takes its context frames (B, N*C, H, W) and vector (B, D)."""
        denoiser = self._denoiser(context, vector)
        if self.objective == "regression":
            return self._regress(denoiser, current).clamp(-1, 1)  # deterministic: the sampler does not apply
        return self.diffusion.sample(denoiser, current, sampler or SamplerConfig(), generator=generator, progress=progress)

    @torch.no_grad()
    def predict_x0(self, current: torch.Tensor, generator: torch.Generator | None = None,
                   context: torch.Tensor | None = None, vector: torch.Tensor | None = None) -> torch.Tensor:
        """The network's one-step estimate of the future frame from pure noise (t = T-1): for an
        x0 model the conditional mean it has learnt, the blurriest and highest-PSNR guess."""
        if self.objective == "regression":
            return self.predict(current, context=context, vector=vector)
        return self.diffusion.sample(self._denoiser(context, vector), current, SamplerConfig("ddim", 1), generator=generator)

    def network_calls(self, sampler: SamplerConfig) -> int:
        """Network passes one prediction costs."""
        return 1 if self.objective == "regression" else sampler.calls(self.diffusion.T)

    def _denoiser(self, context: torch.Tensor | None, vector: torch.Tensor | None):
        """The network as the diffusion process calls it, model(x_t, t, current), with the rest bound."""
        if context is None and vector is None:
            return self.net
        return lambda x_t, t, current: self.net(x_t, t, current, context, vector)

    def _regress(self, denoiser, current: torch.Tensor) -> torch.Tensor:
        t0 = torch.zeros(current.shape[0], dtype=torch.long, device=current.device)
        out = denoiser(torch.zeros_like(current), t0, current)
        return current + out if self.diffusion.cfg.residual else out
