"""The diffusion process: noise schedules, forward noising, training targets; which sampler to run.

Notation (Ho et al. 2020): beta_t is the noise added at step t, alpha_t = 1 - beta_t,
alpha_bar_t = prod_{s<=t} alpha_s. The forward process jumps straight to any t:

    x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * eps,    eps ~ N(0, I)

The network sees (x_t, t, its inputs: the current frame and, for a world model, more) and predicts one of
    eps  the noise (the original DDPM),
    v    sqrt(alpha_bar_t) * eps - sqrt(1 - alpha_bar_t) * x_0 (Salimans & Ho 2022),
    x0   the clean future frame itself;
all three are interchangeable given x_t, which is how the samplers use any of them.

Two options change what is diffused and how it is weighted:
    residual       diffuse the change (future - current) instead of the future frame. Most of a
                   kitchen frame does not move in k steps, so the change is mostly zero and an
                   untrained network already predicts "copy the frame"; it learns only motion.
    data_scale     multiply what is diffused by this (latent diffusion's scale factor, EDM's
                   sigma_data in reverse): the change of a kitchen frame in k steps has a standard
                   deviation of about 0.14, so at data_scale 1 even t = T/2 leaves it 50 times
                   weaker than the noise; about 7 gives it unit variance, as the schedule assumes.
    loss_weighting "min_snr" (Hang et al. 2023) weights each timestep's loss by
                   min(SNR_t, gamma) expressed for the chosen target, so the many nearly noise-free
                   steps do not dominate training.

The samplers that run the reverse process (DDPM, DDIM, ...) are classes in
kitchen_lib.model.samplers, named in its registry; `SamplerConfig` (saved in every checkpoint)
picks one by name. Diffusion gives them the schedule, the
posterior q(x_{t-1} | x_t, x_0) and the clipped x0/eps estimate they share.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from kitchen_lib.base.errors import UserError
from kitchen_lib.base.global_batch import global_shape, own_rows

PREDICTIONS = ("eps", "v", "x0")
SCHEDULES = ("linear", "cosine")
LOSS_WEIGHTINGS = ("none", "min_snr")

# net(x_t, t, inputs) -> prediction: x_t and the prediction (B, C, H, W), t (B,), inputs the example's
# tensors (kitchen_lib.base.example), of which the process itself reads only the current frame.
Denoiser = Callable[[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process and what the network learns. The defaults won bench/ablation.py on a
    CPU budget; the original DDPM recipe is schedule="linear", prediction="eps", residual=False."""

    timesteps: int = 1000  # training timesteps T of the forward process
    schedule: str = "cosine"  # "linear" (original DDPM) or "cosine" (Nichol & Dhariwal)
    beta_start: float = 1e-4  # linear schedule only
    beta_end: float = 0.02  # linear schedule only
    prediction: str = "x0"  # what the network predicts: "eps", "v" or "x0"
    residual: bool = True  # diffuse (future - current frame) rather than the future frame
    data_scale: float = 1.0  # what is diffused, times this (see the module's docstring)
    loss_weighting: str = "none"  # "none" or "min_snr"
    min_snr_gamma: float = 5.0
    # Training timesteps t = T * u**timestep_power, u uniform: 1 is uniform, below 1 trains more
    # at high noise, where a few-step sampler's first calls decide the frame.
    timestep_power: float = 1.0

    def validate(self) -> None:
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown schedule {self.schedule!r}: choose one of {SCHEDULES}")
        if self.prediction not in PREDICTIONS:
            raise UserError(f"unknown prediction target {self.prediction!r}: choose one of {PREDICTIONS}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise UserError(f"unknown loss weighting {self.loss_weighting!r}: choose one of {LOSS_WEIGHTINGS}")
        if self.min_snr_gamma <= 0:
            raise UserError(f"--min_snr_gamma must be positive (got {self.min_snr_gamma})")
        if not 0 < self.timestep_power <= 4:
            raise UserError(f"--timestep_power must be in (0, 4] (got {self.timestep_power})")
        if not (math.isfinite(self.data_scale) and self.data_scale > 0):
            raise UserError(f"--data_scale must be a positive number (got {self.data_scale})")
        if self.timesteps < 2:
            raise UserError(f"--timesteps must be at least 2 (got {self.timesteps})")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise UserError(f"need 0 < beta_start < beta_end < 1 (got {self.beta_start}, {self.beta_end})")


def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), betas clipped at 0.999."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = alpha_bar / alpha_bar[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)


def _gather(a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """a[t] shaped (B, 1, 1, 1) to broadcast over images."""
    return a.to(t.device)[t].float().view(-1, 1, 1, 1)


class Diffusion:
    """A noise schedule and everything derived from it (kept in float64, used in float32)."""

    def __init__(self, cfg: DiffusionConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self.T = cfg.timesteps
        if cfg.schedule == "linear":
            betas = linear_betas(cfg.timesteps, cfg.beta_start, cfg.beta_end)
        else:
            betas = cosine_betas(cfg.timesteps)
        self.betas = betas
        self.alphas = 1 - betas
        self.alpha_bar = torch.cumprod(self.alphas, 0)
        self.alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])
        # Posterior q(x_{t-1} | x_t, x_0): mean = c0 * x_0 + ct * x_t, variance below.
        self.posterior_var = betas * (1 - self.alpha_bar_prev) / (1 - self.alpha_bar)
        self.posterior_logvar = torch.log(torch.cat([self.posterior_var[1:2], self.posterior_var[1:]]))
        self.posterior_c0 = betas * self.alpha_bar_prev.sqrt() / (1 - self.alpha_bar)
        self.posterior_ct = (1 - self.alpha_bar_prev) * self.alphas.sqrt() / (1 - self.alpha_bar)

    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) per step."""
        return self.alpha_bar / (1 - self.alpha_bar)

    # --- forward process and targets ---------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t from x_0 in one jump."""
        return _gather(self.alpha_bar.sqrt(), t) * x0 + _gather((1 - self.alpha_bar).sqrt(), t) * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network should output for this (x_0, noise, t)."""
        if self.cfg.prediction == "eps":
            return noise
        if self.cfg.prediction == "x0":
            return x0
        return _gather(self.alpha_bar.sqrt(), t) * noise - _gather((1 - self.alpha_bar).sqrt(), t) * x0

    def x0_and_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Turn a network output of any target type into (x_0, eps) estimates."""
        sa, s1a = _gather(self.alpha_bar.sqrt(), t), _gather((1 - self.alpha_bar).sqrt(), t)
        if self.cfg.prediction == "eps":
            return (x_t - s1a * out) / sa, out
        if self.cfg.prediction == "x0":
            return out, (x_t - sa * out) / s1a
        x0 = sa * x_t - s1a * out
        return x0, s1a * x_t + sa * out

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weights (B, 1, 1, 1) for timesteps t.

        min-SNR asks for weight min(SNR, gamma) on the x0 error; the eps and v errors are the x0
        error scaled by SNR and SNR + 1, so their weights are divided by those."""
        if self.cfg.loss_weighting == "none":
            return torch.ones(len(t), 1, 1, 1, device=t.device)
        snr = _gather(self.snr(), t)
        w = snr.clamp(max=self.cfg.min_snr_gamma)
        return w / {"x0": 1, "eps": snr, "v": snr + 1}[self.cfg.prediction]

    def training_loss(self, model: Denoiser, inputs: dict[str, torch.Tensor], future: torch.Tensor,
                      generator: torch.Generator | None = None, part: tuple[int, int] = (0, 1)) -> torch.Tensor:
        """(Weighted) mean squared error of the network's output against its target, t drawn per sample.

        part = (rank, world): the batch is that rank's slice of a global batch `world` times its
        size; t and the noise are drawn for the global batch and sliced (`distributed.own_rows`)."""
        x0 = self.to_x0(future, inputs["current"])
        n = x0.shape[0]
        t = own_rows(self.training_timesteps(n * part[1], x0.device, generator), part)
        noise = own_rows(torch.randn(global_shape(x0.shape, part), device=x0.device, generator=generator), part)
        out = model(self.q_sample(x0, t, noise), t, inputs)
        return torch.mean(self.loss_weights(t) * (out.float() - self.target(x0, noise, t)) ** 2)

    def training_timesteps(self, n: int, device: torch.device | str = "cpu",
                           generator: torch.Generator | None = None) -> torch.Tensor:
        """n training timesteps: uniform over 0..T-1, or biased to high noise by timestep_power < 1."""
        if self.cfg.timestep_power == 1:
            return torch.randint(0, self.T, (n,), device=device, generator=generator)
        u = torch.rand(n, device=device, generator=generator) ** self.cfg.timestep_power
        return (u * self.T).long().clamp(max=self.T - 1)

    # --- what is diffused: the frame, or its change --------------------------------------

    def to_x0(self, future: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """The clean sample the process diffuses for this (future, current) pair."""
        return (future - current if self.cfg.residual else future) * self.cfg.data_scale

    def to_frame(self, x0: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """Back from the diffused sample to a future frame in [-1, 1]."""
        x0 = x0 / self.cfg.data_scale
        return (x0 + current if self.cfg.residual else x0).clamp(-1, 1)

    def _clip_x0(self, x0: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """Keep x0 estimates to values a frame can take (for a residual, -1 <= current + x0 <= 1)."""
        s = self.cfg.data_scale
        if self.cfg.residual:
            return torch.maximum(torch.minimum(x0, (1 - current) * s), (-1 - current) * s)
        return x0.clamp(-s, s)

    # --- what the samplers share --------------------------------------------------------

    def estimate(self, model: Denoiser, x: torch.Tensor, t: int, inputs: dict[str, torch.Tensor],
                 clip: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One network call at timestep t: (t as a batch, x0 estimate, eps estimate)."""
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        x0, eps = self.x0_and_eps(model(x, tt, inputs).float(), x, tt)
        if clip:  # frames live in [-1, 1]; re-derive eps so the two stay consistent
            x0 = self._clip_x0(x0, inputs["current"])
            eps = (x - _gather(self.alpha_bar.sqrt(), tt) * x0) / _gather((1 - self.alpha_bar).sqrt(), tt)
        return tt, x0, eps

    def posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(x_{t-1} | x_t, x_0)."""
        mean = _gather(self.posterior_c0, t) * x0 + _gather(self.posterior_ct, t) * x_t
        return mean, (0.5 * _gather(self.posterior_logvar, t)).exp()
