"""Training: AdamW, gradient clipping, EMA weights, AMP on CUDA, validation, checkpoints,
exact resume, TensorBoard.

Resuming continues the run as if it had never stopped: the data order of every epoch is a
permutation seeded by (seed, epoch), the noise and timesteps come from a generator whose
state is checkpointed, so is the global RNG (dropout), and the checkpoint records where in
the epoch it was taken.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from kitchen_lib import divergence, runlog
from kitchen_lib.checkpoint import CheckpointError, save_checkpoint
from kitchen_lib.conditioning import ConditionedPairs
from kitchen_lib.config import RunConfig, build_model, check_resumable
from kitchen_lib.device import pick_device
from kitchen_lib.inference import Predictor, prediction_grid
from kitchen_lib.locks import claim_folder, clean_stale
from kitchen_lib.lr_schedule import lr_factor
from kitchen_lib.pairs_cache import build_pairs
from kitchen_lib.progress import advance, progress_bar
from kitchen_lib.runs import checkpoints_to_replace, load_resumable
from kitchen_lib.unet import channels_last, count_parameters


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


@dataclass
class TrainResult:
    checkpoint_dir: Path
    tensorboard_dir: Path
    epochs_done: int
    optimizer_steps: int
    final_val_loss: float
    best_val_loss: float
    seconds: float
    samples_per_second: float
    stopped_early: bool
    parameters: int


class Trainer:
    """One training run. `Trainer(cfg).fit()` trains; `Trainer(cfg, resume="latest").fit()` continues."""

    def __init__(self, cfg: RunConfig, resume: str | None = None, progress: bool = True, force_rebuild: bool = False,
                 overwrite: bool = False) -> None:
        self.cfg, self.progress = cfg, progress
        cfg.validate()  # before any work
        self.ckpt_dir = cfg.checkpoint_dir()
        # One run per folder, for the run's life: the OS drops the lock if the process dies.
        self._lock = claim_folder(self.ckpt_dir, "this training run",
                                  lambda: self._setup(resume, force_rebuild, overwrite))

    def close(self) -> None:
        """Release the run folder (fit() does this when it ends)."""
        self._lock.close()

    def _setup(self, resume: str | None, force_rebuild: bool, overwrite: bool) -> None:
        cfg, tc = self.cfg, self.cfg.train
        self.device = pick_device(tc.device)
        clean_stale(self.ckpt_dir)  # temp files of killed runs
        state, held = None, []
        if resume:
            path, state = load_resumable(self.ckpt_dir, resume)
            check_resumable(path, state["config"], cfg)
        else:
            held = checkpoints_to_replace(self.ckpt_dir, overwrite)

        self.cache = build_pairs(cfg.data, root=cfg.root() / "pairs", force=force_rebuild, progress=self.progress)
        self.train_set = ConditionedPairs(self.cache, "train", cfg.conditioning)
        self.val_set = ConditionedPairs(self.cache, "val", cfg.conditioning)
        if len(self.train_set) < tc.batch_size:
            raise ValueError(f"only {len(self.train_set)} training pairs, fewer than one batch of {tc.batch_size}")

        torch.manual_seed(tc.seed)
        self.model = build_model(cfg)
        if self.model.net.vector_dim:  # the actions' and joint state's scale, from the training episodes
            self.model.net.set_vector_stats(*map(torch.from_numpy, self.train_set.vector_stats()))
        self.model.net = channels_last(self.model.net.to(self.device))
        self.ema = AveragedModel(self.model.net, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True)
        self.ema_model = self.model.with_net(self.ema.module)
        self.opt = torch.optim.AdamW(self.model.net.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, partial(lr_factor, tc))
        self.use_amp = tc.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.noise_gen = torch.Generator(device=self.device).manual_seed(tc.seed + 1)
        self.epoch, self.batch_in_epoch, self.opt_step = 0, 0, 0
        self.best_val, self.last_val = math.inf, math.nan
        self._fitted = False
        self.early_losses: list[float] = []  # the first REFERENCE_STEPS losses: what "exploding" is measured against
        self.saved_step = 0
        tb_root = Path(tc.tensorboard_dir) if tc.tensorboard_dir else cfg.root() / "tensorboard"
        self.tb_dir = tb_root / f"{tc.run_name_prefix}_{cfg.preset}_{time.strftime('%Y%m%d-%H%M%S')}"
        if state is not None:
            self._restore(state)
        for p in held:  # --overwrite: the old run goes only once the new one is ready to start
            p.unlink()
        metrics = self.ckpt_dir / runlog.METRICS_FILE
        if state is None and metrics.exists():  # a fresh run: an old run's rows (or a killed one's) are kept aside
            metrics.rename(self.ckpt_dir / f"metrics-before-{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
        self.batches_per_epoch = len(self.train_set) // tc.batch_size

    # --- checkpoints -------------------------------------------------------------------

    def _state(self) -> dict:
        return {
            "model": self.model.net.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.opt_step,
            "best_val_loss": self.best_val, "last_val_loss": self.last_val, "early_losses": self.early_losses,
            "rng": {"torch": torch.get_rng_state(), "noise": self.noise_gen.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "config": self.cfg.to_dict(), "tensorboard_dir": str(self.tb_dir),
            "parameters": count_parameters(self.model.net),
        }

    def _restore(self, s: dict) -> None:
        self.model.net.load_state_dict(s["model"])
        self.ema.load_state_dict(s["ema"])
        self.opt.load_state_dict(s["optimizer"])
        self.sched.load_state_dict(s["scheduler"])
        self.scaler.load_state_dict(s["scaler"])
        self.epoch, self.batch_in_epoch, self.opt_step = s["epoch"], s["batch_in_epoch"], s["step"]
        self.best_val, self.last_val = s["best_val_loss"], s["last_val_loss"]
        self.early_losses, self.saved_step = list(s.get("early_losses", [])), self.opt_step
        # A resumed run may lower the learning rate (after a divergence): the schedule follows the new one.
        lr = self.cfg.train.learning_rate
        self.sched.base_lrs = [lr for _ in self.opt.param_groups]
        for g in self.opt.param_groups:
            g["initial_lr"], g["lr"] = lr, lr * lr_factor(self.cfg.train, self.sched.last_epoch)
        torch.set_rng_state(s["rng"]["torch"])
        self.noise_gen.set_state(s["rng"]["noise"].cpu())  # generator states are CPU byte tensors
        if s["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["rng"]["cuda"])
        self.tb_dir = Path(s["tensorboard_dir"])
        runlog.truncate_metrics(self.ckpt_dir, self.opt_step)

    def _save(self, name: str) -> Path:
        self._stop_if(divergence.weights_problem(self.model.net))
        path = self.ckpt_dir / name
        try:
            save_checkpoint(self._state(), path)
        except (OSError, RuntimeError) as e:  # disk full, read-only folder, ... (torch wraps some as RuntimeError)
            raise CheckpointError(f"could not write {path} ({type(e).__name__}: {e}). Is the disk full or the folder "
                                  f"read-only? The previous {name}, if any, is intact.") from e
        self.saved_step = self.opt_step
        return path

    def _stop_if(self, problem: str | None) -> None:
        """Stop without saving if a divergence check found a blow-up."""
        if problem is not None:
            raise divergence.diverged_error(self.ckpt_dir, problem, self.opt_step, self.epoch, self.saved_step,
                                            self.cfg.train.learning_rate)

    # --- the loop ------------------------------------------------------------------------

    def _batches(self, epoch: int, start: int):
        loader = torch.utils.data.DataLoader(
            self.train_set, batch_size=self.cfg.train.batch_size, drop_last=True,
            sampler=_epoch_order(len(self.train_set), self.cfg.train.seed, epoch).tolist(),
            num_workers=self.cfg.train.num_workers)
        for i, batch in enumerate(loader):
            if i >= start:
                yield i, batch

    @torch.no_grad()
    def validate(self) -> float:
        """Mean loss of the EMA weights on the validation episodes, with fixed noise."""
        self.ema_model.eval()
        g = torch.Generator(device=self.device).manual_seed(self.cfg.train.seed + 12345)
        loader = torch.utils.data.DataLoader(self.val_set, batch_size=max(self.cfg.train.batch_size, 32))
        total, n = 0.0, 0
        for batch in loader:
            batch = {key: v.to(self.device) for key, v in batch.items()}
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
                loss = self.ema_model.loss(batch, g)
            total += float(loss) * len(batch["current"])
            n += len(batch["current"])
        return total / max(n, 1)

    def sample_grid(self, n: int = 4) -> np.ndarray:
        """Rows of current | predicted (the run's sampler, EMA weights) | actual for fixed validation pairs."""
        was_training = self.model.training
        grid = prediction_grid(Predictor(self.ema_model.eval(), self.cfg, self.device), self.cache, "val", n)
        self.model.train(was_training)
        return grid

    def fit(self) -> TrainResult:
        from torch.utils.tensorboard import SummaryWriter

        if self._fitted:
            raise RuntimeError("a Trainer runs once: to continue, make a new one with resume=\"latest\"")
        self._fitted = True
        tc = self.cfg.train
        writer, bar = None, None
        t0, samples, stopped_early = time.time(), 0, False
        try:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            fresh = self.opt_step == 0
            writer = SummaryWriter(str(self.tb_dir), purge_step=None if fresh else self.opt_step + 1)
            if fresh:
                runlog.add_graph(writer, self.model.net, self.val_set[0], self.device)
            deadline = t0 + 60 * tc.max_minutes if tc.max_minutes else math.inf
            bar = progress_bar(self.cfg.preset, tc, self.epoch * self.batches_per_epoch + self.batch_in_epoch,
                               tc.epochs * self.batches_per_epoch, enabled=self.progress)
            while self.epoch < tc.epochs and not stopped_early:
                self.model.train()
                for i, batch in self._batches(self.epoch, self.batch_in_epoch):
                    loss, gnorm = self._train_step({key: v.to(self.device) for key, v in batch.items()})
                    self.batch_in_epoch = i + 1
                    samples += len(batch["current"])
                    self._log_step(loss, gnorm, writer)
                    advance(bar, tc, t0, self.opt_step, self.epoch, loss)
                    if time.time() > deadline:
                        stopped_early = True
                        break
                if stopped_early:
                    self._save("latest.pt")
                    bar.write(f"stopped after {tc.max_minutes:.1f} minutes at epoch {self.epoch}, optimizer step "
                              f"{self.opt_step}; resume with --resume_from_checkpoint latest")
                    break
                self._end_epoch(writer, bar)
            runlog.add_hparams(writer, self.cfg.to_dict(), self.last_val, self.best_val)
        finally:
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
            self.close()  # the run folder is free again, however the run ended
        seconds = time.time() - t0
        return TrainResult(self.ckpt_dir, self.tb_dir, self.epoch, self.opt_step, self.last_val, self.best_val, seconds,
                           samples / max(seconds, 1e-9), stopped_early, count_parameters(self.model.net))

    def _train_step(self, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
            loss = self.model.loss(batch, self.noise_gen)
        value = loss.item()
        self._stop_if(divergence.loss_problem(value, self.early_losses))
        if len(self.early_losses) < divergence.REFERENCE_STEPS:
            self.early_losses.append(value)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        gnorm = float(torch.nn.utils.clip_grad_norm_(self.model.net.parameters(), self.cfg.train.grad_clip))
        self._stop_if(divergence.grad_norm_problem(gnorm, self.use_amp))
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.ema.update_parameters(self.model.net)
        self.opt_step += 1
        return value, gnorm

    def _log_step(self, loss: float, gnorm: float, writer) -> None:
        tc, lr = self.cfg.train, self.sched.get_last_lr()[0]
        runlog.append_metrics(self.ckpt_dir, step=self.opt_step, epoch=self.epoch, loss=loss, lr=lr, grad_norm=gnorm)
        if self.opt_step % tc.log_freq == 0:
            for tag, value in (("loss/train", loss), ("lr", lr), ("grad_norm", gnorm)):
                writer.add_scalar(tag, value, self.opt_step)
        if tc.log_images and self.opt_step % tc.log_image_every == 0:
            writer.add_image("samples/current|predicted|actual", self.sample_grid(), self.opt_step, dataformats="HWC")

    def _end_epoch(self, writer, bar) -> None:
        tc = self.cfg.train
        self.last_val = self.validate()
        self._stop_if(divergence.val_loss_problem(self.last_val, self.best_val))
        writer.add_scalar("loss/val", self.last_val, self.opt_step)
        runlog.append_metrics(self.ckpt_dir, step=self.opt_step, epoch=self.epoch, val_loss=self.last_val)
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        improved = self.last_val < self.best_val
        if improved:
            self.best_val = self.last_val
        if improved and tc.save_best:
            self._save("best.pt")
        if self.epoch % tc.checkpoint_freq == 0:
            self._save(f"epoch_{self.epoch:04d}.pt")
        self._save("latest.pt")
        bar.write(f"epoch {self.epoch}/{tc.epochs}: val loss {self.last_val:.5f}" + (" (best)" if improved else ""))


def train(cfg: RunConfig, resume: str | None = None, progress: bool = True, force_rebuild: bool = False,
          overwrite: bool = False) -> TrainResult:
    return Trainer(cfg, resume=resume, progress=progress, force_rebuild=force_rebuild, overwrite=overwrite).fit()

