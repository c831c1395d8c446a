"""Training: AdamW, gradient clipping, EMA weights, AMP on CUDA, validation, checkpoints,
exact resume (kitchen_lib.training.run_state), TensorBoard. The Trainer owns its state: state_dict() is what a checkpoint holds (the schema is
kitchen_lib.training.checkpoint's) and load_state_dict() puts it back. It trains the model and
data sets its config describes, or a model and data sets handed to it (see `Trainer`).

Under torchrun every rank runs a Trainer (kitchen_lib.training.distributed): DDP averages the gradients,
each rank reads its share of every global batch, and only rank 0 writes files or prints. All
ranks hold the same weights, EMA, optimizer and RNG states, so rank 0's checkpoint is the run's.
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import Dataset

from kitchen_lib.base.device import cpu_has_native_bf16
from kitchen_lib.base.errors import UserError
from kitchen_lib.base.locks import claim_folder
from kitchen_lib.data.cache_builder import build_pairs
from kitchen_lib.data.examples import ExampleSet
from kitchen_lib.model.frame_model import FrameModel
from kitchen_lib.model.unet import channels_last, count_parameters
from kitchen_lib.training import batches, distributed, divergence, run_state, runlog
from kitchen_lib.training.config import RunConfig, build_model
from kitchen_lib.training.distributed import World
from kitchen_lib.training.given_model import check_given_model
from kitchen_lib.training.interrupt import StopRequest, TrainingInterrupted, signal_from_flags, stop_signals
from kitchen_lib.training.lr_schedule import lr_factor
from kitchen_lib.training.progress import advance, progress_bar
from kitchen_lib.training.run_checkpoints import RunCheckpoints
from kitchen_lib.training.runs import make_room
from kitchen_lib.training.validation import sample_grid, validation_loss


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


class Trainer(RunCheckpoints):
    """One training run. `Trainer(cfg).fit()` trains; `Trainer(cfg, resume="latest").fit()` continues.
    `world`: this rank's place under torchrun (its process group already started; see `train`).

    `model`: the FrameModel to train (in place) instead of `build_model(cfg)`; its weights are
    its own, but its architecture must be the one `cfg` describes (else ValueError), since the
    checkpoints record `cfg` and are rebuilt from it. `train_set`, `val_set` (both or neither):
    the data sets instead of the config's pairs cache, giving whole batches as ExampleSet does; a
    world model's vector statistics come from `train_set`."""

    def __init__(self, cfg: RunConfig, resume: str | None = None, progress: bool = True, force_rebuild: bool = False,
                 overwrite: bool = False, world: World | None = None, *, model: FrameModel | None = None,
                 train_set: Dataset | None = None, val_set: Dataset | None = None) -> None:
        self.world, self.progress = world or World(), progress
        self.cfg = cfg = replace(cfg, train=replace(cfg.train, world_size=self.world.size))  # the checkpoint records it
        cfg.validate()  # before any work
        if model is not None:
            check_given_model(model, cfg)
        if (train_set is None) != (val_set is None):
            raise ValueError("pass both train_set and val_set, or neither (the config's pairs cache gives both)")
        self.ckpt_dir = cfg.checkpoint_dir()
        self.train_set, self.val_set, self.cache = train_set, val_set, None
        self._shared = False  # whether rank 0 has told the others how its part of the setup went
        setup = partial(self._setup, resume, force_rebuild, overwrite, model)
        self._lock = ExitStack()  # rank 0 holds the folder for all ranks; the others hold nothing
        try:
            if self.world.is_main:  # one run per folder, for the run's life: the OS drops the lock if the process dies
                self._lock = claim_folder(self.ckpt_dir, "this training run", setup)
            else:
                setup()
        except BaseException as e:
            if self.world.is_main and not self._shared:  # the others wait to hear it: they raise the same error
                distributed.share_from_main(self.world, failure=e)
            raise

    def close(self) -> None:
        """Release the run folder (fit() does this when it ends)."""
        self._lock.close()

    def _setup(self, resume: str | None, force_rebuild: bool, overwrite: bool, model: FrameModel | None) -> None:
        cfg, tc, world = self.cfg, self.cfg.train, self.world
        self.device = distributed.device_for(world, tc.device)
        state, held = None, []
        if world.is_main:  # the folder and the data are rank 0's first; the others wait to hear how it went
            state, held = run_state.open_run_dir(self.ckpt_dir, cfg, resume, overwrite)
            self._open_data(force_rebuild)
        state = distributed.share_from_main(world, state)
        self._shared = True
        if not world.is_main:  # the cache is there now (on another machine's disk, it is built there)
            self._open_data(False)
        torch.manual_seed(tc.seed)
        self.model = build_model(cfg) if model is None else model
        if self.model.net.vector_dim:  # the actions' and joint state's scale, from the training episodes
            self.model.net.set_vector_stats(*map(torch.from_numpy, self.train_set.vector_stats()))
        self.model.net = channels_last(self.model.net.to(self.device))
        self.ema = AveragedModel(self.model.net, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True)
        self.ema_model = self.model.with_net(self.ema.module)
        self.train_model = self.model.with_net(distributed.wrap(self.model.net, world, self.device)) \
            if world.size > 1 else self.model  # DDP for training only: the EMA and checkpoints keep the raw network
        self.opt = torch.optim.AdamW(self.model.net.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay)
        self.trained_minutes = 0.0  # over every fit, as of the last step (rank 0's clock)
        # The factor at the step it is asked for, after the minutes the ranks last agreed on.
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda step: lr_factor(tc, step, self.trained_minutes))
        self.use_amp = tc.amp and self.device.type == "cuda"
        # The training step's autocast: fp16 (scaled) on CUDA; bf16 (which needs no scaler) on a CPU
        # that computes it natively, if the config asks.
        self.autocast_dtype = torch.float16 if self.use_amp else \
            torch.bfloat16 if tc.cpu_bf16 and self.device.type == "cpu" and cpu_has_native_bf16() else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.noise_gen = torch.Generator(device=self.device).manual_seed(tc.seed + 1)
        self.epoch, self.batch_in_epoch, self.opt_step, self.saved_step = 0, 0, 0, 0
        self.best_val, self.last_val, self._fitted = math.inf, math.nan, False
        self.train_seconds, self._clock = 0.0, None  # wall time trained before this fit, when this fit began
        self.early_losses: list[float] = []  # the first REFERENCE_STEPS losses: what "exploding" is measured against
        tb_root = Path(tc.tensorboard_dir) if tc.tensorboard_dir else cfg.root() / "tensorboard"
        self.tb_dir = tb_root / f"{tc.run_name_prefix}_{cfg.preset}_{time.strftime('%Y%m%d-%H%M%S')}"
        if state is not None:
            self.load_state_dict(state)
            if world.is_main:
                runlog.truncate_metrics(self.ckpt_dir, self.opt_step)
        self.batches_per_epoch = len(self.train_set) // tc.global_batch
        distributed.barrier(world)  # every rank is ready to start: only now may the old run go
        if world.is_main:
            make_room(self.ckpt_dir, held, fresh=state is None)

    def _open_data(self, force_rebuild: bool) -> None:
        """The pairs cache and the training and validation sets, unless the sets were handed in."""
        cfg, tc = self.cfg, self.cfg.train
        if self.train_set is None:
            self.cache = build_pairs(cfg.data, root=cfg.root() / "pairs", force=force_rebuild,
                                     progress=self.progress and self.world.is_main)
            self.train_set = ExampleSet(self.cache, self.cache.pairs("train"), cfg.conditioning)
            self.val_set = ExampleSet(self.cache, self.cache.pairs("val"), cfg.conditioning)
        if len(self.train_set) < tc.global_batch:
            each = f" ({tc.batch_size} per process x {self.world.size})" if self.world.size > 1 else ""
            raise UserError(f"only {len(self.train_set)} training pairs, fewer than one batch of {tc.global_batch}{each}")
        if len(self.val_set) == 0:  # every epoch ends in validation, and the best checkpoint is chosen by it
            raise UserError("no validation pairs: give the validation split some episodes (--val_fraction above 0)")
        self.first = None if tc.first_dataset_share is None else batches.first_dataset_mask(self.train_set)

    def _say(self, bar, text: str) -> None:
        if self.world.is_main:
            bar.write(text)

    # --- the loop ------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        from torch.utils.tensorboard import SummaryWriter

        if self._fitted:
            raise RuntimeError("a Trainer runs once: to continue, make a new one with resume=\"latest\"")
        self._fitted = True
        tc, main = self.cfg.train, self.world.is_main
        writer, bar = None, None
        t0, samples, stopped_early = time.time(), 0, False
        self._clock = t0
        try:
            fresh = self.opt_step == 0
            if main:  # only rank 0 writes: no event file, graph or bar on the others
                self.ckpt_dir.mkdir(parents=True, exist_ok=True)
                writer = SummaryWriter(str(self.tb_dir), purge_step=None if fresh else self.opt_step + 1)
                if fresh:
                    runlog.add_graph(writer, self.model.net, batches.pick(self.val_set, [0], self.device))
            deadline = t0 + 60 * tc.max_minutes if tc.max_minutes else math.inf
            bar = progress_bar(self.cfg.preset, tc, self.epoch * self.batches_per_epoch + self.batch_in_epoch,
                               tc.epochs * self.batches_per_epoch, enabled=self.progress and main)
            if self.world.size > 1:
                self._say(bar, f"{self.world.size} processes, batch {tc.batch_size} each: global batch {tc.global_batch}")
            if fresh and tc.lr_decay_minutes and tc.max_minutes and tc.max_minutes > tc.lr_decay_minutes:
                self._say(bar, f"the learning rate reaches its floor ({tc.lr_final_fraction:g}x) at minute "
                               f"{tc.lr_decay_minutes:g} of {tc.max_minutes:g}: --lr_decay_minutes {tc.max_minutes:g} "
                               "spreads its decay over the whole run")
            with stop_signals() as stop:  # Ctrl-C and SIGTERM stop after a step, all ranks alike
                while self.epoch < tc.epochs and not stopped_early:
                    self.train_model.train()
                    for i, batch in batches.epoch_batches(self.train_set, tc, self.world, self.epoch,
                                                          self.batch_in_epoch, self.device, self.first):
                        loss, gnorm, stopped_early, signum = self._train_step(batch, deadline, stop)
                        self.batch_in_epoch = i + 1
                        samples += tc.global_batch
                        self._log_step(loss, gnorm, writer)
                        advance(bar, tc, t0, self.opt_step, self.epoch, loss)
                        if stopped_early:
                            break
                    if stopped_early:
                        self._save("latest.pt")
                        command = distributed.resume_command(self.world.size)
                        if signum:
                            raise TrainingInterrupted(signum, self.opt_step, self.epoch, command)
                        self._say(bar, f"stopped after {tc.max_minutes:.1f} minutes at epoch {self.epoch}, optimizer "
                                       f"step {self.opt_step}; resume with {command}")
                        break
                    self._end_epoch(writer, bar)
            if main:
                runlog.add_hparams(writer, self.cfg.to_dict(), self.last_val, self.best_val,
                                   {"train.global_batch": tc.global_batch})
        finally:
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
            self.close()  # the run folder is free again, however the run ended
        seconds = time.time() - t0
        return TrainResult(self.ckpt_dir, self.tb_dir, self.epoch, self.opt_step, self.last_val, self.best_val, seconds,
                           samples / max(seconds, 1e-9), stopped_early, count_parameters(self.model.net))

    def _train_step(self, batch: dict[str, torch.Tensor], deadline: float, stop: StopRequest) -> tuple[float, float, bool, int]:
        """One optimizer step: (mean loss over the ranks, gradient norm, whether to stop after it, the signal or 0)."""
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            loss = self.train_model.loss(batch, self.noise_gen, part=self.world.part)
        # One collective: the loss every rank logs and checks, rank 0's clock and the signals, so all stop together.
        now = time.time()
        value, self.trained_minutes, (time_up, *signals) = distributed.agree(
            self.world, loss.item(), [self.world.is_main and now > deadline, *stop.flags()], self.device,
            clock=self.seconds_trained(now) / 60)
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
        signum = signal_from_flags(signals)
        return value, gnorm, time_up or bool(signum), signum

    def _log_step(self, loss: float, gnorm: float, writer) -> None:
        if not self.world.is_main:
            return
        tc, lr = self.cfg.train, self.sched.get_last_lr()[0]
        runlog.append_metrics(self.ckpt_dir, step=self.opt_step, epoch=self.epoch, loss=loss, lr=lr, grad_norm=gnorm)
        if self.opt_step % tc.log_freq == 0:
            for tag, value in (("loss/train", loss), ("lr", lr), ("grad_norm", gnorm)):
                writer.add_scalar(tag, value, self.opt_step)
        if tc.log_images and self.opt_step % tc.log_image_every == 0:
            was_training = self.model.training  # the EMA network is another module: the model is left as it was
            grid = sample_grid(self.ema_model, self.val_set, self.cfg.sampler, self.device)
            self.model.train(was_training)
            writer.add_image("samples/current|predicted|actual", grid, self.opt_step, dataformats="HWC")

    def _end_epoch(self, writer, bar) -> None:
        tc = self.cfg.train
        self.last_val = validation_loss(self.ema_model, self.val_set, tc, self.world, self.device,
                                        self.autocast_dtype)
        self._stop_if(divergence.val_loss_problem(self.last_val, self.best_val))
        if self.world.is_main:
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
        self._say(bar, f"epoch {self.epoch}/{tc.epochs}: val loss {self.last_val:.5f}" + (" (best)" if improved else ""))


def train(cfg: RunConfig, resume: str | None = None, progress: bool = True, force_rebuild: bool = False,
          overwrite: bool = False) -> TrainResult:
    """Train (or resume) a run. Under torchrun every rank calls this, and together they train one
    model (the environment says which rank this is); a plain process trains alone."""
    world = distributed.world_from_env()
    with distributed.process_group(world, distributed.device_for(world, cfg.train.device)):
        return Trainer(cfg, resume=resume, progress=progress, force_rebuild=force_rebuild, overwrite=overwrite,
                       world=world).fit()

