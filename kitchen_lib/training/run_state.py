"""What makes a training run repeatable: its data order, its validation noise, its RNG states
(and what a run finds in its folder: a state to resume, or checkpoints to replace). What a
checkpoint holds is kitchen_lib.training.checkpoint's; the Trainer's state_dict() fills it.

Exact resume rests on three things: every epoch's data order is a permutation seeded by
(seed, epoch) (`epoch_order`); the training noise comes from a generator whose state is saved,
as are the global RNGs (dropout); and the checkpoint records where in the epoch it was taken.
Validation noise is seeded per batch (`val_noise_seed`), so it never depends on the run's past.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kitchen_lib.base.locks import clean_stale
from kitchen_lib.training.config import RunConfig
from kitchen_lib.training.resume_check import check_resumable
from kitchen_lib.training.runs import checkpoints_to_replace, load_resumable


def epoch_order(n: int, seed: int, epoch: int, first: torch.Tensor | None = None,
                share: float | None = None) -> torch.Tensor:
    """The order in which an epoch visits the n training pairs (every rank computes the same):
    a permutation; or, given `first` ((n,) bool: the pairs of the first joined dataset) and its
    `share`, n draws of which round(n * share) come from those pairs and the rest from the
    others, each part taken without repeats until it runs out (then again, in a new order)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if share is None:
        return torch.randperm(n, generator=g)
    if first is None or first.shape != (n,):
        raise ValueError(f"a share needs the (n,) mask of the first dataset's pairs (n = {n})")
    n_first = round(n * share)
    parts = [(torch.nonzero(first).flatten(), n_first), (torch.nonzero(~first).flatten(), n - n_first)]
    order = torch.cat([_draw(idx, m, g) for idx, m in parts])
    return order[torch.randperm(n, generator=g)]


def _draw(idx: torch.Tensor, m: int, g: torch.Generator) -> torch.Tensor:
    """m of the indices `idx`, in permutations of them laid end to end."""
    if m == 0:
        return idx[:0]
    rounds = -(-m // len(idx))
    return torch.cat([idx[torch.randperm(len(idx), generator=g)] for _ in range(rounds)])[:m]


def val_noise_seed(seed: int, batch: int) -> int:
    """The seed of validation batch `batch`'s noise: the same whichever rank scores it."""
    return (seed + 12345) * 1_000_003 + batch


def open_run_dir(run_dir: Path, cfg: RunConfig, resume: str | None, overwrite: bool) -> tuple[dict | None, list[Path]]:
    """What a run finds in its folder (holding its lock): the state it resumes, checked against
    `cfg`, or for a fresh run the checkpoints it would replace (refused unless `overwrite`).
    Temp files of killed runs are swept first."""
    clean_stale(run_dir)
    if resume:
        path, state = load_resumable(run_dir, resume)
        check_resumable(path, state["config"], cfg)
        return state, []
    return None, checkpoints_to_replace(run_dir, overwrite)


def rng_state(noise: torch.Generator, device: torch.device) -> dict:
    """The states of every generator a run draws from: the global ones (dropout) and its noise."""
    rng = {"torch": torch.get_rng_state(), "noise": noise.get_state(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    if device.type == "cuda":  # the GPU this rank trains on: under torchrun, rank r's is cuda:r, not cuda:0
        rng["cuda_device"] = torch.cuda.get_rng_state(device)
    return rng


def set_rng_state(rng: dict, noise: torch.Generator, device: torch.device) -> None:
    """Put back what `rng_state` took (a checkpoint's "rng" entry)."""
    torch.set_rng_state(rng["torch"])
    noise.set_state(rng["noise"].cpu())  # generator states are CPU byte tensors
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if "cuda_device" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda_device"].cpu(), device)
