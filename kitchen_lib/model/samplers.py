"""Samplers: ways to run the reverse process from pure noise to a future frame, each a small class.

A sampler is called `sampler(diffusion, net, inputs, generator, progress)` and returns future
frames in [-1, 1] shaped like inputs["current"]; `calls(T)` is its network calls per frame. It
reads the process only through `Diffusion` (schedule, posterior, the clipped x0/eps estimate).

    DDPM  ancestral sampling through all T training timesteps (Ho et al. 2020).
    DDIM  a chosen subset of `steps` timesteps (Song et al. 2021), deterministic with eta = 0,
          "trailing" spacing (Lin et al. 2024): it starts at t = T-1 and its last network call is
          at t = T/steps - 1, not at t = 0, where a call would change almost nothing.

SAMPLERS is the one list of samplers: `SamplerConfig` (below) picks from
it by name, and the CLI's --sampler choices, the demo's buttons and a test of the README read it.
Adding a sampler is a subclass of `Sampler` and `@register_sampler` above it.

Guidance on the actions (`SamplerConfig.guidance`) is no sampler's business: the model hands
every sampler a guided network instead of the plain one (kitchen_lib.model.guidance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from kitchen_lib.base.errors import UserError
from kitchen_lib.model.diffusion import Denoiser, Diffusion

DEFAULT_DDIM_STEPS = 10  # what SamplerConfig() means by "DDIM" (chosen with bench/quality.py)


class Sampler:
    """The interface: a name, its settings from a `SamplerConfig`, a cost and the sampling itself."""

    name: ClassVar[str]  # its --sampler value and registry key
    takes_steps: ClassVar[bool] = False  # whether SamplerConfig.steps means anything to it (the demo's slider)

    @classmethod
    def from_config(cls, steps: int | None, eta: float) -> Sampler:
        """The sampler these settings describe; refuses settings it does not take."""
        if steps is not None:
            raise UserError(f"--sampling_steps (--steps) is not a setting of {cls.name}")
        return cls()

    def calls(self, timesteps: int) -> int:
        """Network calls per sampled frame for a process with `timesteps` training timesteps."""
        raise NotImplementedError

    def __call__(self, diffusion: Diffusion, net: Denoiser, inputs: dict[str, torch.Tensor],
                 generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
        """Future frames in [-1, 1] for a batch of inputs, from pure noise drawn with `generator`."""
        raise NotImplementedError


SAMPLERS: dict[str, type[Sampler]] = {}


def register_sampler(cls: type[Sampler]) -> type[Sampler]:
    """Class decorator: make `cls` a sampler known by its `name` everywhere."""
    if cls.name in SAMPLERS:
        raise ValueError(f"a sampler named {cls.name!r} is already registered ({SAMPLERS[cls.name].__name__})")
    SAMPLERS[cls.name] = cls
    return cls


def pure_noise(net: Denoiser, current: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Where every sampler starts: N(0, I) shaped like the network's output for this batch."""
    channels = getattr(net, "out_channels", current.shape[1])
    return torch.randn((current.shape[0], channels, *current.shape[2:]), device=current.device, generator=generator)


def ddim_timesteps(timesteps: int, steps: int) -> list[int]:
    """The `steps` of `timesteps` training timesteps DDIM visits, "trailing": T-1 first, evenly spaced, none repeated."""
    if not 1 <= steps <= timesteps:
        raise UserError(f"DDIM steps must be between 1 and {timesteps} (got {steps})")
    return [round(timesteps - i * timesteps / steps) - 1 for i in range(steps)]


@register_sampler
@dataclass(frozen=True)
class DDIM(Sampler):
    """DDIM through `steps` of the T steps (eta=0: deterministic, eta=1: DDPM-like noise)."""

    steps: int
    eta: float
    name: ClassVar[str] = "ddim"
    takes_steps: ClassVar[bool] = True

    @classmethod
    def from_config(cls, steps: int | None, eta: float) -> DDIM:
        if steps is not None and steps < 1:
            raise UserError(f"--sampling_steps (--steps) must be at least 1 (got {steps})")
        if not 0 <= eta <= 1:
            raise UserError(f"--eta must be in [0, 1] (got {eta})")
        return cls(DEFAULT_DDIM_STEPS if steps is None else steps, eta)

    def calls(self, timesteps: int) -> int:
        return self.steps

    @torch.no_grad()
    def __call__(self, diffusion: Diffusion, net: Denoiser, inputs: dict[str, torch.Tensor],
                 generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
        current = inputs["current"]
        x = pure_noise(net, current, generator)
        ts = ddim_timesteps(diffusion.T, self.steps)
        for i, t in enumerate(tqdm(ts, desc=f"DDIM-{self.steps}", disable=not progress, leave=False)):
            _, x0, eps = diffusion.estimate(net, x, t, inputs)
            ab = float(diffusion.alpha_bar[t])
            ab_prev = float(diffusion.alpha_bar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
            sigma = self.eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
            x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * torch.randn(x.shape, device=x.device, generator=generator)
        return diffusion.to_frame(x, current)


@register_sampler
@dataclass(frozen=True)
class DDPM(Sampler):
    """Ancestral sampling through all T steps."""

    name: ClassVar[str] = "ddpm"

    @classmethod
    def from_config(cls, steps: int | None, eta: float) -> DDPM:
        if steps is not None:
            raise UserError("--steps is for DDIM: DDPM runs all of the model's training timesteps "
                             "(--sampling_steps is the same flag)")
        return cls()

    def calls(self, timesteps: int) -> int:
        return timesteps

    @torch.no_grad()
    def __call__(self, diffusion: Diffusion, net: Denoiser, inputs: dict[str, torch.Tensor],
                 generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
        current = inputs["current"]
        x = pure_noise(net, current, generator)
        for t in tqdm(range(diffusion.T - 1, -1, -1), desc="DDPM", disable=not progress, leave=False):
            tt, x0, _ = diffusion.estimate(net, x, t, inputs)
            mean, std = diffusion.posterior(x0, x, tt)
            if t > 0:
                x = mean + std * torch.randn(x.shape, device=x.device, generator=generator)
            else:
                x = mean
        return diffusion.to_frame(x, current)


@dataclass(frozen=True)
class SamplerConfig:
    """How to sample: a registered sampler's name and its settings (kitchen_lib.model.samplers).

    DDPM always walks all T training timesteps; DDIM takes `steps` of them (DEFAULT_DDIM_STEPS unless told).
    guidance w != 1 runs the network with and without the actions at every step (FrameModel.predict
    applies it; the model must have been trained with action dropout)."""

    name: str = "ddim"  # a registered sampler: ddim, ddpm, ...
    steps: int | None = None  # sampling steps; None: DEFAULT_DDIM_STEPS for DDIM, all T for DDPM
    eta: float = 0.0  # DDIM only: 0 deterministic, 1 as noisy as DDPM
    guidance: float = 1.0  # classifier-free guidance on the actions: 1 none, >1 follow them harder (needs --action_dropout)

    def validate(self) -> None:
        if not 0 <= self.eta <= 1:  # for every sampler: a checkpoint's config may be handed to another
            raise UserError(f"--eta must be in [0, 1] (got {self.eta})")
        if not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise UserError(f"--guidance must be a number of at least 0 (1: no guidance; got {self.guidance})")
        self.build()

    @property
    def guided(self) -> bool:
        """Whether each network call is made twice, with and without the actions."""
        return self.guidance != 1

    def build(self) -> Sampler:
        """The sampler object these settings describe (its class checks them)."""
        if self.name not in SAMPLERS:
            raise UserError(f"unknown sampler {self.name!r}: choose one of {tuple(SAMPLERS)}")
        return SAMPLERS[self.name].from_config(self.steps, self.eta)

    def calls(self, timesteps: int) -> int:
        """Network calls per sampled frame for a process with `timesteps` training timesteps (with
        guidance, each step's call is made for two rows a frame: twice the passes)."""
        return self.build().calls(timesteps) * (2 if self.guided else 1)

    def label(self, timesteps: int) -> str:
        """E.g. "DDIM-10", "DDPM-1000" or "DDIM-2, guidance 2 (4 passes)"."""
        plain = f"{self.name.upper()}-{self.build().calls(timesteps)}"
        return f"{plain}, guidance {self.guidance:g} ({self.calls(timesteps)} passes)" if self.guided else plain
