"""A 3x3 convolution that trains faster channels-last on the CPU.

oneDNN's channels-last (NHWC) weight gradient of a 3x3 convolution runs a slow kernel on AVX2
CPUs: about 3x its NCHW one at 128px with 64 channels, while its NHWC forward and input
gradient are the faster ones. So on large maps `Conv3x3` computes the weight gradient alone
from NCHW copies. Same parameters, same state-dict keys and the same maths as nn.Conv2d
(tests/test_unet.py checks every gradient against the plain model).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NCHW_WEIGHT_GRAD_MIN = 2**20  # input values per sample (C*H*W) from which Conv3x3 takes its detour


class Conv3x3(nn.Conv2d):
    """A 3x3 nn.Conv2d, padded to keep H, W; its weight gradient on large maps via _NCHWWeightGrad."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__(c_in, c_out, 3, stride=stride, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not under autocast (its bf16 forward would not match the saved fp32 tensors) nor when
        # traced (TensorBoard's graph): the plain convolution, which computes the same.
        if (x.device.type == "cpu" and torch.is_grad_enabled() and self.weight.requires_grad
                and not torch.jit.is_tracing() and not torch.is_autocast_enabled("cpu")
                and math.prod(x.shape[1:]) >= NCHW_WEIGHT_GRAD_MIN and not x.is_contiguous()
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
