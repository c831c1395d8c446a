"""Classifier-free guidance on the actions (Ho & Salimans 2022), both halves of it.

Training (action dropout): a fraction of the pairs are shown with their actions replaced by a
learned "no action" (`ConditionalUNet.null_actions`), so the one network learns the future
with the actions and without them. `dropped_actions` draws which pairs.

Sampling (guidance scale w): every network call predicts with and without the actions, and
the prediction used is

    out = out_uncond + w * (out_cond - out_uncond)

w = 1 is the plain conditional model, w > 1 pushes the sample further in the direction the
actions move it (and w = 0 ignores them). `GuidedDenoiser` is that network, a drop-in for the
plain one: the samplers do not know about guidance.
"""

from __future__ import annotations

import torch
from torch import nn

from kitchen_lib.base.errors import UserError
from kitchen_lib.base.example import NULL_ACTIONS
from kitchen_lib.base.global_batch import global_shape, own_rows
from kitchen_lib.model.diffusion import Denoiser

GUIDANCE_HELP = "docs/usage.md, 'Guidance on the actions'"


def dropped_actions(n: int, fraction: float, generator: torch.Generator | None, part: tuple[int, int] = (0, 1),
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """(n,) bool: which of this rank's n training pairs lose their actions, each with probability
    `fraction`. Drawn for the global batch and sliced, as the noise is (kitchen_lib.base.global_batch),
    so W ranks drop the pairs one process with the global batch would."""
    u = torch.rand(global_shape((n,), part), device=device, generator=generator)
    return own_rows(u, part) < fraction


def can_guide(net: nn.Module) -> bool:
    """Whether `net` learnt a "no action" (it was trained with action dropout)."""
    return getattr(net, "null_actions", None) is not None


def check_guidance(net: nn.Module, scale: float) -> None:
    """Raise UserError unless `net` can be sampled with guidance `scale` (any net can at 1)."""
    if scale != 1 and not can_guide(net):
        raise UserError(f"--guidance {scale:g} needs a model trained with action dropout, which learns the "
                        f"'no action' input that guidance compares the actions against; this model was trained "
                        f"without it. Train one with --action_dropout (e.g. 0.1, on an action-conditioned preset such "
                        f"as cpu-world; {GUIDANCE_HELP}), or sample with --guidance 1.")


class GuidedDenoiser:
    """net(x_t, t, inputs) with guidance `scale` on the actions: one forward pass of 2B rows, the
    first B with the actions, the last B without, combined as the module says.

    The combination is made on the network's output, whatever it predicts (eps, v or x0): for a
    fixed x_t and t, each of the three is an affine function of any other (kitchen_lib.model.
    diffusion, `x0_and_eps`), and out_uncond + w * (out_cond - out_uncond) is an affine
    combination (weights 1 - w and w, summing to 1), which affine maps preserve. So guiding x0
    here is exactly guiding eps. The samplers clip the guided x0 afterwards, as any other."""

    def __init__(self, net: nn.Module, scale: float) -> None:
        check_guidance(net, scale)
        self.net, self.scale = net, scale

    @property
    def out_channels(self) -> int:
        return self.net.out_channels  # what `pure_noise` shapes the starting noise by

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        b = x_t.shape[0]
        both = {key: torch.cat([v, v]) for key, v in inputs.items()}  # (2B, ...): conditioned, then not
        both[NULL_ACTIONS] = torch.arange(2 * b, device=x_t.device) >= b
        out = self.net(torch.cat([x_t, x_t]), torch.cat([t, t]), both)
        cond, uncond = out[:b], out[b:]
        return uncond + self.scale * (cond - uncond)


def guided(net: nn.Module, scale: float) -> Denoiser:
    """The network to sample with at guidance `scale`: `net` itself at 1 (the plain sampler, bit
    for bit), else a GuidedDenoiser around it."""
    return net if scale == 1 else GuidedDenoiser(net, scale)
