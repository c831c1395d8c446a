"""The learning-rate schedule: linear warm-up, then constant or a cosine decay.

The decay runs over optimizer steps (`lr_decay_steps`) or over minutes of training
(`lr_decay_minutes`, for a run with a time budget, whose step count depends on the machine).
Both count over resumes, so a resumed run follows the same curve.
"""

from __future__ import annotations

import math

import torch

from kitchen_lib.training.config import TrainConfig


def lr_factor(tc: TrainConfig, step: int, minutes: float = 0.0) -> float:
    """Learning-rate multiplier at optimizer step `step`, after `minutes` of training: linear
    warm-up, then constant or a cosine decay to `lr_final_fraction` by step `lr_decay_steps` or
    by minute `lr_decay_minutes`, and that fraction after it."""
    warm = min(1.0, (step + 1) / max(1, tc.warmup_steps))
    if tc.lr_decay_minutes:
        done = min(1.0, minutes / tc.lr_decay_minutes)
    elif tc.lr_decay_steps:
        done = min(1.0, max(0, step - tc.warmup_steps) / max(1, tc.lr_decay_steps - tc.warmup_steps))
    else:
        return warm
    return warm * (tc.lr_final_fraction + (1 - tc.lr_final_fraction) * 0.5 * (1 + math.cos(math.pi * done)))


def follow_learning_rate(opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LambdaLR, tc: TrainConfig,
                         minutes: float = 0.0) -> None:
    """Set a resumed run's schedule to `tc.learning_rate`, `minutes` into its training: a resume
    may lower it (after a divergence), and the restored optimizer and schedule still hold the old one."""
    lr = tc.learning_rate
    sched.base_lrs = [lr for _ in opt.param_groups]
    for g in opt.param_groups:
        g["initial_lr"], g["lr"] = lr, lr * lr_factor(tc, sched.last_epoch, minutes)
