"""Training: AdamW, gradient clipping, EMA weights, AMP on CUDA, validation, checkpoints,
exact resume, TensorBoard.

Resuming continues the run as if it had never stopped: the data order of every epoch is a
permutation seeded by (seed, epoch), the noise and timesteps come from a generator whose
state is checkpointed, so is the global RNG (dropout), and the checkpoint records where in
the epoch it was taken.
"""

from __future__ import annotations

import math
import statistics
import time
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from kitchen_lib import runlog
from kitchen_lib.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from kitchen_lib.conditioning import ConditionedPairs
from kitchen_lib.config import RunConfig, TrainConfig, build_model, check_resumable, preset, with_overrides
from kitchen_lib.datasets import ensure_dataset
from kitchen_lib.device import pick_device
from kitchen_lib.inference import Predictor, prediction_grid
from kitchen_lib.locks import LOCK_NAME, clean_stale, folder_lock
from kitchen_lib.pairs import build_pairs
from kitchen_lib.runs import (
    find_checkpoint,
    regression_beside,
    resolve_checkpoint,
    resume_candidates,
    saved_checkpoints,
)
from kitchen_lib.unet import channels_last, count_parameters


class TrainingDiverged(RuntimeError):
    """The run blew up (a non-finite or exploding loss, gradient or weights); nothing was saved after it."""


# A loss this many times the run's early median, or a validation loss this many times its best,
# is a blow-up, not noise: healthy runs stay within a few times their first losses.
DIVERGENCE_FACTOR = 100.0
REFERENCE_STEPS = 20  # the first optimizer steps whose median loss is the run's reference


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def lr_factor(tc: TrainConfig, step: int) -> float:
    """Learning-rate multiplier at optimizer step `step`: linear warm-up, then constant or a
    cosine decay to `lr_final_fraction` over `lr_decay_steps` (counted in steps, not minutes,
    so a resumed run follows the same curve)."""
    warm = min(1.0, (step + 1) / max(1, tc.warmup_steps))
    if not tc.lr_decay_steps:
        return warm
    done = min(1.0, max(0, step - tc.warmup_steps) / max(1, tc.lr_decay_steps - tc.warmup_steps))
    return warm * (tc.lr_final_fraction + (1 - tc.lr_final_fraction) * 0.5 * (1 + math.cos(math.pi * done)))


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
        created = not self.ckpt_dir.exists()
        self._lock = ExitStack()
        self._lock.enter_context(folder_lock(self.ckpt_dir, "this training run"))
        try:
            self._setup(resume, force_rebuild, overwrite)
        except BaseException:
            if created:  # a run that never started leaves no folder behind (unlinked while still ours)
                (self.ckpt_dir / LOCK_NAME).unlink(missing_ok=True)
            self.close()
            if created:
                try:
                    self.ckpt_dir.rmdir()
                except OSError:  # not empty after all: leave it
                    pass
            raise

    def close(self) -> None:
        """Release the run folder (fit() does this when it ends)."""
        self._lock.close()

    def _setup(self, resume: str | None, force_rebuild: bool, overwrite: bool) -> None:
        cfg, tc = self.cfg, self.cfg.train
        self.device = pick_device(tc.device)
        clean_stale(self.ckpt_dir)  # temp files of killed runs
        state, held = None, []
        if resume:
            path, state = self._load_resumable(resume)
            check_resumable(path, state["config"], cfg)
        else:
            held = saved_checkpoints(self.ckpt_dir)
            if held and not overwrite:
                raise CheckpointError(
                    f"{self.ckpt_dir} already holds a run ({', '.join(p.name for p in held)}); resume it with "
                    f"--resume_from_checkpoint latest, start over with --overwrite, or choose another --checkpoint_dir. "
                    f"Nothing was overwritten.")

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

    def _load_resumable(self, resume: str) -> tuple[Path, dict]:
        """The checkpoint to resume: a path or "best" as asked; "latest" falls back to the newest
        epoch_*.pt, then best.pt, if latest.pt is missing or unreadable (and says so)."""
        if resume != "latest":
            path = resolve_checkpoint(self.ckpt_dir, resume)
            return path, load_checkpoint(path)
        tried = []
        for path in resume_candidates(self.ckpt_dir):
            try:
                state = load_checkpoint(path)
            except CheckpointError as e:
                tried.append(f"{path.name}: {str(e).split(':', 1)[-1].strip()[:120]}")
                continue
            if tried:
                print(f"resuming from {path.name}, the newest checkpoint that loads (skipped: {'; '.join(tried)})",
                      flush=True)
            return path, state
        raise CheckpointError(f"nothing to resume in {self.ckpt_dir}: " + ("; ".join(tried) if tried else
                              "it holds no checkpoint. Train one first (without --resume_from_checkpoint)."))

    def _save(self, name: str) -> Path:
        bad = [n for n, p in self.model.net.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            self._diverged(f"weights became non-finite ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
        path = self.ckpt_dir / name
        try:
            save_checkpoint(self._state(), path)
        except (OSError, RuntimeError) as e:  # disk full, read-only folder, ... (torch wraps some as RuntimeError)
            raise CheckpointError(f"could not write {path} ({type(e).__name__}: {e}). Is the disk full or the folder "
                                  f"read-only? The previous {name}, if any, is intact.") from e
        self.saved_step = self.opt_step
        return path

    def _diverged(self, what: str) -> None:
        """Stop without saving: drop the metrics rows after the last checkpoint and say how to go on."""
        runlog.truncate_metrics(self.ckpt_dir, self.saved_step)
        kept = [p.name for p in saved_checkpoints(self.ckpt_dir)]
        lr = self.cfg.train.learning_rate
        then = (f"The checkpoints saved before it ({', '.join(kept)}) are intact: resume with a lower learning rate, "
                f"e.g. --resume_from_checkpoint latest --learning_rate {lr / 10:g}" if kept
                else "No checkpoint had been saved yet: start again with a lower --learning_rate, e.g. "
                     f"{lr / 10:g}")
        raise TrainingDiverged(f"training diverged at optimizer step {self.opt_step} (epoch {self.epoch}): {what}; "
                               f"nothing was saved after step {self.saved_step}. {then}.")

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
            bar = tqdm(total=tc.epochs * self.batches_per_epoch,
                       initial=self.epoch * self.batches_per_epoch + self.batch_in_epoch,
                       desc=f"train {self.cfg.preset}", unit="step", disable=not self.progress)
            while self.epoch < tc.epochs and not stopped_early:
                self.model.train()
                for i, batch in self._batches(self.epoch, self.batch_in_epoch):
                    loss, gnorm = self._train_step({key: v.to(self.device) for key, v in batch.items()})
                    self.batch_in_epoch = i + 1
                    samples += len(batch["current"])
                    self._log_step(loss, gnorm, writer)
                    bar.update()
                    bar.set_postfix(loss=f"{loss:.4f}", epoch=self.epoch)
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
        if not math.isfinite(value):
            self._diverged(f"loss became {value}")
        if len(self.early_losses) >= 2 and value > DIVERGENCE_FACTOR * statistics.median(self.early_losses):
            self._diverged(f"loss {value:.3g} is over {DIVERGENCE_FACTOR:g}x the run's early median "
                           f"{statistics.median(self.early_losses):.3g}")
        if len(self.early_losses) < REFERENCE_STEPS:
            self.early_losses.append(value)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        gnorm = float(torch.nn.utils.clip_grad_norm_(self.model.net.parameters(), self.cfg.train.grad_clip))
        if not math.isfinite(gnorm) and not self.use_amp:  # AMP's scaler skips such steps itself
            self._diverged(f"gradient norm became {gnorm}")
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
        if not math.isfinite(self.last_val) or (math.isfinite(self.best_val)
                                                  and self.last_val > DIVERGENCE_FACTOR * self.best_val):
            self._diverged(f"validation loss {self.last_val:.3g} (best so far {self.best_val:.3g})")
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


def ensure_trained(preset_name: str, smoke: bool, objectives: tuple[str, ...] = ("diffusion",),
                   checkpoint: str | Path | None = None) -> Path:
    """The model a notebook shows: `checkpoint` if given, else the newest run of the preset.

    In smoke mode a missing model is trained on the spot (seconds), with a regression twin if
    asked for; otherwise a missing model is an error that says how to train one."""
    if checkpoint is not None:
        return Path(checkpoint)
    found = find_checkpoint(preset_name)
    twins = found is not None and all(o == "diffusion" or regression_beside(found) for o in objectives)
    if twins or (found is not None and not smoke):  # outside smoke mode a missing twin is shown as missing
        return found
    if not smoke:
        raise FileNotFoundError(f"no trained model yet: run notebook 05 or `python -m kitchen_lib train --preset {preset_name}`")
    cfg = preset(preset_name)
    ensure_dataset(cfg.data.dataset, cfg.generate, progress=False)
    run = cfg.root() / "checkpoints" / f"notebook-{preset_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for objective in objectives:
        folder = run if objective == "diffusion" else run.with_name(f"{run.name}-{objective}")
        train(with_overrides(cfg, train={"checkpoint_dir": str(folder), "objective": objective, "log_images": False}),
              progress=False)
    return run / "best.pt"
