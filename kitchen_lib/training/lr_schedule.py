"""The learning-rate schedule: linear warm-up, then constant or a cosine decay.

A function of the optimizer step alone, so a resumed run follows the same curve.
"""

from __future__ import annotations

import math

import torch

from kitchen_lib.training.config import TrainConfig


def lr_factor(tc: TrainConfig, step: int) -> float:
    """Learning-rate multiplier at optimizer step `step`: linear warm-up, then constant or a
    cosine decay to `lr_final_fraction` over `lr_decay_steps` (counted in steps, not minutes,
    so a resumed run follows the same curve)."""
    warm = min(1.0, (step + 1) / max(1, tc.warmup_steps))
    if not tc.lr_decay_steps:
        return warm
    done = min(1.0, max(0, step - tc.warmup_steps) / max(1, tc.lr_decay_steps - tc.warmup_steps))
    return warm * (tc.lr_final_fraction + (1 - tc.lr_final_fraction) * 0.5 * (1 + math.cos(math.pi * done)))


def follow_learning_rate(opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LambdaLR, tc: TrainConfig) -> None:
    """Set a resumed run's schedule to `tc.learning_rate`: a resume may lower it (after a
    divergence), and the restored optimizer and schedule still hold the old one."""
    lr = tc.learning_rate
    sched.base_lrs = [lr for _ in opt.param_groups]
    for g in opt.param_groups:
        g["initial_lr"], g["lr"] = lr, lr * lr_factor(tc, sched.last_epoch)
