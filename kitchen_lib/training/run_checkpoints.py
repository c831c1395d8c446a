"""The Trainer's state and the checkpoints it writes: what a checkpoint holds
(kitchen_lib.training.checkpoint lists it), taken from a run and put back into one.

Trainer (kitchen_lib.training.trainer) inherits these methods; they live here so that the loop
and the checkpoint format each fit on a page. The attributes they use are the Trainer's, set
up by Trainer._setup.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel

from kitchen_lib.model.frame_model import FrameModel
from kitchen_lib.model.unet import count_parameters
from kitchen_lib.training import divergence, run_state
from kitchen_lib.training.checkpoint import write_checkpoint
from kitchen_lib.training.config import RunConfig
from kitchen_lib.training.distributed import World
from kitchen_lib.training.lr_schedule import follow_learning_rate


class RunCheckpoints:
    """A run's state (state_dict, load_state_dict) and writing it (_save); the base of Trainer."""

    cfg: RunConfig
    world: World
    device: torch.device
    ckpt_dir: Path
    model: FrameModel
    ema: AveragedModel
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    noise_gen: torch.Generator
    epoch: int  # epochs finished
    batch_in_epoch: int  # batches of the current epoch done
    opt_step: int
    saved_step: int  # the optimizer step of the last checkpoint written
    best_val: float
    last_val: float
    early_losses: list[float]
    tb_dir: Path
    train_seconds: float  # wall time trained in the fits before this one
    trained_minutes: float  # over every fit, as of the last step
    _clock: float | None  # when this fit began

    def state_dict(self) -> dict:
        """Everything a checkpoint holds (kitchen_lib.training.checkpoint lists it): weights, EMA,
        optimizer, schedule, position, RNG states, config."""
        return {
            "model": self.model.net.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.opt_step,
            "best_val_loss": self.best_val, "last_val_loss": self.last_val, "early_losses": self.early_losses,
            "rng": run_state.rng_state(self.noise_gen, self.device), "config": self.cfg.to_dict(),
            "tensorboard_dir": str(self.tb_dir), "parameters": count_parameters(self.model.net),
            "train_seconds": self.seconds_trained(time.time()),
        }

    def seconds_trained(self, now: float) -> float:
        """Wall time trained over every fit, up to `now` (a time.time())."""
        return self.train_seconds + (now - self._clock if self._clock is not None else 0.0)

    def load_state_dict(self, state: dict) -> None:
        """Put a checkpoint's state back, into a Trainer set up for the run that wrote it (a resume
        checks the configs first: kitchen_lib.training.resume_check.check_resumable)."""
        self.model.net.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch_in_epoch, self.opt_step = state["epoch"], state["batch_in_epoch"], state["step"]
        self.best_val, self.last_val = state["best_val_loss"], state["last_val_loss"]
        self.early_losses, self.saved_step = list(state.get("early_losses", [])), self.opt_step
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.trained_minutes = self.train_seconds / 60
        follow_learning_rate(self.opt, self.sched, self.cfg.train, self.trained_minutes)
        run_state.set_rng_state(state["rng"], self.noise_gen, self.device)
        self.tb_dir = Path(state["tensorboard_dir"])

    def _save(self, name: str) -> Path:
        self._stop_if(divergence.weights_problem(self.model.net))  # on every rank (same weights): all stop alike
        path = self.ckpt_dir / name
        if self.world.is_main:
            write_checkpoint(self.state_dict(), path)
        self.saved_step = self.opt_step
        return path

    def _stop_if(self, problem: str | None) -> None:
        """Stop without saving if a divergence check found a blow-up."""
        if problem is not None:
            raise divergence.diverged_error(self.ckpt_dir, problem, self.opt_step, self.epoch, self.saved_step,
                                            self.cfg.train.learning_rate, truncate=self.world.is_main)
