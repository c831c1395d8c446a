"""Checkpoints: written atomically, read with `torch.load(weights_only=True)`.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts; anything else (an
arbitrary pickled object) is refused when loading. Its schema, the one that the Trainer's
state_dict() writes and that both resuming (Trainer.load_state_dict) and inference
(`inference_weights`, load_predictor) read:

    model            the network's state dict (FrameModel.net, never wrapped in DDP)
    ema              the EMA's AveragedModel state dict: the averaged network under "module."
                     (see `inference_weights`) and "n_averaged"
    optimizer, scheduler, scaler   AdamW's, the LambdaLR schedule's and the grad scaler's state dicts
    epoch            epochs finished
    batch_in_epoch   batches of the current epoch done (0 at an epoch's end)
    step             optimizer steps taken
    best_val_loss, last_val_loss   validation losses (inf and nan before the first validation)
    early_losses     the first training losses, what divergence checks compare against
    rng              generator states: "torch", "noise", "cuda" (a list) and, on a GPU, "cuda_device"
    config           RunConfig.to_dict(): the run's whole configuration, which describes the model saved
    tensorboard_dir  where the run logs (str)
    parameters       the network's parameter count
    train_seconds    wall-clock seconds of training up to this checkpoint, over every resume
                     (validation and checkpoint writing included): a time-to-quality curve's x

Checkpoints written before an entry existed may lack early_losses and train_seconds.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from kitchen_lib.base.errors import UserError
from kitchen_lib.base.paths import atomic_path

EMA_PREFIX = "module."  # AveragedModel keeps the averaged network as its `module`


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, corrupt, unsafe or does not fit; the message says what to do."""


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write to a temporary file in the same folder, then rename: never a half-written file
    (atomic_path fsyncs the file before the rename and the folder after)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)
    return path


def write_checkpoint(state: dict, path: Path) -> Path:
    """`save_checkpoint`, its failures a CheckpointError that says what to check."""
    try:
        return save_checkpoint(state, path)
    except (OSError, RuntimeError) as e:  # disk full, read-only folder, ... (torch wraps some as RuntimeError)
        raise CheckpointError(f"could not write {path} ({type(e).__name__}: {e}). Is the disk full or the "
                              f"folder read-only? The previous {path.name}, if any, is intact.") from e


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


def inference_weights(state: dict, ema: bool = True) -> dict[str, torch.Tensor]:
    """The network's state dict to predict with: the EMA's (its "module." prefix stripped) or
    the trained weights. Raises CheckpointError if the checkpoint has no such entry."""
    which = "ema" if ema else "model"
    weights = state.get(which)
    if not isinstance(weights, dict):
        raise CheckpointError(f"no {'EMA ' if ema else ''}weights (no {which!r} entry): the checkpoint is damaged "
                              f"or was not written by this project's training")
    if not ema:
        return weights
    return {k[len(EMA_PREFIX):]: v for k, v in weights.items() if k.startswith(EMA_PREFIX)}
