"""A training run's state: what makes it repeatable, what a checkpoint holds, and putting it back
(and what a run finds in its folder: a state to resume, or checkpoints to replace).

Exact resume rests on three things: every epoch's data order is a permutation seeded by
(seed, epoch) (`epoch_order`); the training noise comes from a generator whose state is saved,
as are the global RNGs (dropout); and the checkpoint records where in the epoch it was taken.
Validation noise is seeded per batch (`val_noise_seed`), so it never depends on the run's past.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from kitchen_lib.base.locks import clean_stale
from kitchen_lib.model.unet import count_parameters
from kitchen_lib.training.config import RunConfig, check_resumable
from kitchen_lib.training.lr_schedule import lr_factor
from kitchen_lib.training.runs import checkpoints_to_replace, load_resumable

if TYPE_CHECKING:
    from kitchen_lib.training.trainer import Trainer


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which an epoch visits the n training pairs (every rank computes the same)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


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


def capture(t: Trainer) -> dict:
    """Everything a checkpoint holds: weights, EMA, optimizer, schedule, position, RNG states, config."""
    rng = {"torch": torch.get_rng_state(), "noise": t.noise_gen.get_state(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    if t.device.type == "cuda":  # the GPU this rank trains on: under torchrun, rank r's is cuda:r, not cuda:0
        rng["cuda_device"] = torch.cuda.get_rng_state(t.device)
    return {
        "model": t.model.net.state_dict(), "ema": t.ema.state_dict(), "optimizer": t.opt.state_dict(),
        "scheduler": t.sched.state_dict(), "scaler": t.scaler.state_dict(),
        "epoch": t.epoch, "batch_in_epoch": t.batch_in_epoch, "step": t.opt_step,
        "best_val_loss": t.best_val, "last_val_loss": t.last_val, "early_losses": t.early_losses,
        "rng": rng, "config": t.cfg.to_dict(), "tensorboard_dir": str(t.tb_dir),
        "parameters": count_parameters(t.model.net),
    }


def restore(t: Trainer, s: dict) -> None:
    """Put a checkpoint's state back into a freshly set-up Trainer."""
    t.model.net.load_state_dict(s["model"])
    t.ema.load_state_dict(s["ema"])
    t.opt.load_state_dict(s["optimizer"])
    t.sched.load_state_dict(s["scheduler"])
    t.scaler.load_state_dict(s["scaler"])
    t.epoch, t.batch_in_epoch, t.opt_step = s["epoch"], s["batch_in_epoch"], s["step"]
    t.best_val, t.last_val = s["best_val_loss"], s["last_val_loss"]
    t.early_losses, t.saved_step = list(s.get("early_losses", [])), t.opt_step
    # A resumed run may lower the learning rate (after a divergence): the schedule follows the new one.
    lr = t.cfg.train.learning_rate
    t.sched.base_lrs = [lr for _ in t.opt.param_groups]
    for g in t.opt.param_groups:
        g["initial_lr"], g["lr"] = lr, lr * lr_factor(t.cfg.train, t.sched.last_epoch)
    torch.set_rng_state(s["rng"]["torch"])
    t.noise_gen.set_state(s["rng"]["noise"].cpu())  # generator states are CPU byte tensors
    if s["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["rng"]["cuda"])
    if "cuda_device" in s["rng"] and t.device.type == "cuda":
        torch.cuda.set_rng_state(s["rng"]["cuda_device"].cpu(), t.device)
    t.tb_dir = Path(s["tensorboard_dir"])
