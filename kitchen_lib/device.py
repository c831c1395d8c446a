"""Which torch device to run on."""

from __future__ import annotations

import torch


def pick_device(name: str = "auto") -> torch.device:
    """"auto": CUDA, then Apple's MPS, then the CPU; otherwise the named device."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
