"""Two layers that compute what torch.nn's compute, faster when training on a CPU.

- `Conv3x3`: oneDNN's channels-last (NHWC) weight gradient of a 3x3 convolution runs a slow
  kernel on AVX2 CPUs (2-4x its NCHW one on 64px and 128px maps), while its NHWC forward and
  input gradient are the faster ones. So on large maps it computes the weight gradient alone
  from NCHW copies. Same parameters, state-dict keys and maths as nn.Conv2d (tests/test_unet.py
  checks every gradient against the plain model).
- `Dropout`: torch draws a CPU dropout mask with `bernoulli_`, one double-precision uniform per
  value; here each value gets 15 random bits compared with a threshold, and the backward keeps
  a 1-byte mask. p is rounded to a multiple of 2^-15 (0.1 -> 0.100006); same expectation, same
  global generator.

bench/speed.py measures both (a seed-preset training step at 128px; docs/results.md, "128px on this CPU").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Output values per sample (C_out*H*W) from which Conv3x3 takes its detour: measured per layer
# of the seed and cpu U-Nets it wins from 2^18 (64 channels at 64px, 16 at 128px)
# and loses below (the cpu preset's 32 channels at 64px).
NCHW_WEIGHT_GRAD_MIN = 2**18


class Conv3x3(nn.Conv2d):
    """A 3x3 nn.Conv2d, padded to keep H, W; its weight gradient on large maps via _NCHWWeightGrad."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__(c_in, c_out, 3, stride=stride, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not under autocast (its bf16 forward would not match the saved fp32 tensors) nor when
        # traced (TensorBoard's graph): the plain convolution, which computes the same.
        if (x.device.type == "cpu" and torch.is_grad_enabled() and self.weight.requires_grad
                and not torch.jit.is_tracing() and not torch.is_autocast_enabled("cpu")
                and self.stride == (1, 1) and self.out_channels * math.prod(x.shape[2:]) >= NCHW_WEIGHT_GRAD_MIN
                and not x.is_contiguous()
                and x.is_contiguous(memory_format=torch.channels_last)):
            return _NCHWWeightGrad.apply(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x)


class _NCHWWeightGrad(torch.autograd.Function):
    """conv2d whose backward takes the input gradient channels-last, the weight gradient NCHW."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride: tuple, padding: tuple) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.conv = (stride, padding)
        return F.conv2d(x, w, b, stride, padding)

    @staticmethod
    def backward(ctx, gy: torch.Tensor) -> tuple:
        x, w = ctx.saved_tensors
        args = ([w.shape[0]], *ctx.conv, (1, 1), False, (0, 0), 1)
        gx = torch.ops.aten.convolution_backward(gy, x, w, *args, (True, False, False))[0] if ctx.needs_input_grad[0] else None
        _, gw, gb = torch.ops.aten.convolution_backward(gy.contiguous(), x.contiguous(), w.contiguous(), *args,
                                                        (False, True, True))
        return gx, gw, gb, None, None


class Dropout(nn.Dropout):
    """nn.Dropout whose mask is cheaper to draw on a CPU (elsewhere, and in eval mode, nn.Dropout's own)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.p > 0 and x.device.type == "cpu") or self.inplace:
            return super().forward(x)
        cut = round(self.p * 2**15)  # drop where 15 uniform random bits fall below it
        if cut >= 2**15:
            return x * 0
        drop = torch.empty_like(x, dtype=torch.int16).random_() < cut  # in x's memory layout
        return _MaskedScale.apply(x, drop, 2**15 / (2**15 - cut))


class _MaskedScale(torch.autograd.Function):
    """x * scale where keep, 0 where dropped; the backward saves only the bool mask."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, drop: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(drop)
        ctx.scale = scale
        return torch.where(drop, 0.0, x * scale)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple:
        (drop,) = ctx.saved_tensors
        return torch.where(drop, 0.0, g * ctx.scale), None, None
