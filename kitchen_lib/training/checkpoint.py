"""Checkpoints: written atomically, read with `torch.load(weights_only=True)`.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts: model and EMA
weights, optimizer and grad-scaler state, epoch/step position, RNG states and the full run
config. Anything else (an arbitrary pickled object) is refused when loading.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from kitchen_lib.base.paths import atomic_path


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, unsafe or does not fit; the message says what to do."""


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write to a temporary file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: train one first (python -m kitchen_lib train) or check the path")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load {path}: it holds objects other than tensors and plain values, and unpickling "
            f"those can run arbitrary code ({str(e).splitlines()[0]}). Only load checkpoints you made with kitchen_lib."
        ) from e
    except Exception as e:  # truncated zip, wrong magic number, ...
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a torch checkpoint ({type(e).__name__}: {e}). "
            f"Delete it, or resume from another one (--resume_from_checkpoint best, or a path)."
        ) from e
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is a torch file but not a kitchen_lib checkpoint (no model/config inside)")
    return state


def config_differences(saved: dict, wanted: dict, prefix: str = "") -> list[str]:
    """Names of the fields that differ between two nested config dicts."""
    diffs = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: checkpoint {a!r}, now {b!r}")
    return diffs
