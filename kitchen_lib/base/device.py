"""Which torch device to run on, and what it computes natively."""

from __future__ import annotations

import re

import torch

from kitchen_lib.base.errors import UserError

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device(name: str) -> str:
    """Refuse a device that is misspelt or not on this machine, before any work."""
    if not isinstance(name, str) or not _DEVICE.fullmatch(name):
        raise UserError(f"--device {name!r}: unknown device; use auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: this machine has no CUDA GPU that torch can use; use --device cpu (or auto)")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has CUDA devices 0..{torch.cuda.device_count() - 1}")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps: Apple's MPS is not available here; use --device cpu (or auto)")
    return name


def pick_device(name: str = "auto") -> torch.device:
    """"auto": CUDA, then Apple's MPS, then the CPU; otherwise the named device (checked)."""
    if name != "auto":
        return torch.device(check_device(name))
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (Intel AMX or AVX512-BF16). Elsewhere torch
    emulates bf16, several times slower than fp32, so a run keeps fp32 there."""
    cpu = torch.cpu
    return any(getattr(cpu, f, lambda: False)() for f in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
