"""Training: AdamW, gradient clipping, EMA weights, AMP on CUDA, validation, checkpoints,
exact resume, TensorBoard.

Resuming continues the run as if it had never stopped: the data order of every epoch is a
permutation seeded by (seed, epoch), the noise and timesteps come from a generator whose
state is checkpointed, so is the global RNG (dropout), and the checkpoint records where in
the epoch it was taken.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from kitchen_lib.checkpoint import CheckpointError, config_differences, load_checkpoint, save_checkpoint
from kitchen_lib.diffusion import Diffusion, DiffusionConfig
from kitchen_lib.images import image_grid
from kitchen_lib.pairs import PAIRS_PRESETS, FramePairs, PairsConfig, build_pairs, to_image
from kitchen_lib.paths import data_dir
from kitchen_lib.unet import UNET_PRESETS, ConditionalUNet, UNetConfig, channels_last, count_parameters

OBJECTIVES = ("diffusion", "regression")


def regression_loss(model, fut: torch.Tensor, cur: torch.Tensor, residual: bool = False) -> torch.Tensor:
    """The deterministic baseline: predict the future frame in one pass (no noise, t = 0)."""
    return torch.mean((regression_predict(model, cur, residual).float() - fut) ** 2)


def regression_predict(model, cur: torch.Tensor, residual: bool = False) -> torch.Tensor:
    """One pass of the network; with residual=True its output is the change added to cur."""
    zeros = torch.zeros_like(cur)
    out = model(zeros, torch.zeros(cur.shape[0], dtype=torch.long, device=cur.device), cur)
    return cur + out if residual else out


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoints are kept."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    batch_size: int = 16
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100  # linear learning-rate warm-up
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    amp: bool = True  # mixed precision, on CUDA only
    device: str = "auto"  # auto: cuda, then mps, then cpu
    seed: int = 0
    num_workers: int = 0  # DataLoader worker processes
    checkpoint_dir: str | None = None  # default: data/checkpoints/<preset>
    checkpoint_freq: int = 5  # also keep epoch_NNNN.pt every N epochs
    save_best: bool = True  # keep best.pt (lowest validation loss)
    tensorboard_dir: str | None = None  # default: data/tensorboard
    run_name_prefix: str = "kitchen"
    log_freq: int = 10  # steps between scalar logs
    log_images: bool = True
    log_image_every: int = 200  # steps between sample-prediction images
    sample_steps: int = 20  # DDIM steps for the logged sample predictions
    max_minutes: float | None = None  # stop cleanly, with a checkpoint, after this long
    objective: str = "diffusion"  # or "regression": the same network, MSE straight to the future frame

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}: choose one of {OBJECTIVES}")


# What a saved config without these fields meant (they were added later).
LEGACY_DIFFUSION = {"residual": False, "loss_weighting": "none", "min_snr_gamma": 5.0}


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs, one dataclass per concern."""

    data: PairsConfig = field(default_factory=PairsConfig)
    model: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "custom"

    def to_dict(self) -> dict:
        return {"data": asdict(self.data), "model": self.model.to_dict(), "diffusion": asdict(self.diffusion),
                "train": asdict(self.train), "preset": self.preset}

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        # Checkpoints from before an option existed were trained without it, whatever today's default.
        diffusion = LEGACY_DIFFUSION | d["diffusion"]
        return cls(data=PairsConfig(**d["data"]), model=UNetConfig.from_dict(d["model"]),
                   diffusion=DiffusionConfig(**diffusion), train=TrainConfig(**d["train"]), preset=d.get("preset", "custom"))

    def checkpoint_dir(self) -> Path:
        if self.train.checkpoint_dir:
            return Path(self.train.checkpoint_dir)
        suffix = "" if self.train.objective == "diffusion" else f"-{self.train.objective}"
        return data_dir() / "checkpoints" / f"{self.preset}{suffix}"


RUN_PRESETS: dict[str, RunConfig] = {
    # Trains in seconds: for tests and the notebooks' smoke mode.
    "smoke": RunConfig(PAIRS_PRESETS["smoke"], UNET_PRESETS["smoke"], DiffusionConfig(),
                       TrainConfig(epochs=2, batch_size=8, learning_rate=5e-4, warmup_steps=5, ema_decay=0.9,
                                   checkpoint_freq=1, log_freq=2, log_image_every=10, sample_steps=5), "smoke"),
    # The course default on a 2-core laptop: 64x64, about 20 minutes.
    "cpu": RunConfig(PAIRS_PRESETS["cpu"], UNET_PRESETS["cpu"], DiffusionConfig(),
                     TrainConfig(epochs=100, batch_size=32, learning_rate=3e-4, warmup_steps=100, ema_decay=0.995,
                                 checkpoint_freq=1, log_freq=20, log_image_every=300, max_minutes=20), "cpu"),
    # The original project's 128x128 setup, for a GPU.
    "seed": RunConfig(PAIRS_PRESETS["seed"], UNET_PRESETS["seed"], DiffusionConfig(),
                      TrainConfig(epochs=100, batch_size=16, learning_rate=1e-4, ema_decay=0.999, checkpoint_freq=5,
                                  log_freq=20, log_image_every=1000), "seed"),
}

# Fields a resumed run may change; any other difference means a different run.
RESUMABLE_CHANGES = {"epochs", "max_minutes", "num_workers", "device", "log_freq", "log_images", "log_image_every",
                     "checkpoint_freq", "tensorboard_dir", "checkpoint_dir", "amp", "sample_steps"}


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def build_model(cfg: RunConfig) -> ConditionalUNet:
    if cfg.model.image_size != cfg.data.size or cfg.model.image_channels != cfg.data.channels:
        raise ValueError(f"the model expects {cfg.model.image_channels}x{cfg.model.image_size}px frames but the data is "
                         f"{cfg.data.channels}x{cfg.data.size}px: set --img_resolution / --grayscale consistently")
    return ConditionalUNet(cfg.model)


def resolve_checkpoint(cfg: RunConfig, which: str) -> Path:
    """'latest', 'best' or a path -> the checkpoint file."""
    if which in ("latest", "best"):
        return cfg.checkpoint_dir() / f"{which}.pt"
    return Path(which)


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


@dataclass
class TrainResult:
    checkpoint_dir: Path
    tensorboard_dir: Path
    epochs_done: int
    steps: int
    final_val_loss: float
    best_val_loss: float
    seconds: float
    samples_per_second: float
    stopped_early: bool
    parameters: int


class Trainer:
    """One training run. `Trainer(cfg).fit()` trains; `Trainer(cfg, resume="latest").fit()` continues."""

    def __init__(self, cfg: RunConfig, resume: str | None = None, progress: bool = True, force_rebuild: bool = False) -> None:
        self.cfg, self.progress = cfg, progress
        t = cfg.train
        t.validate()
        self.device = pick_device(t.device)
        self.ckpt_dir = cfg.checkpoint_dir()
        state = None
        if resume:
            state = self._load_for_resume(resolve_checkpoint(cfg, resume))
        elif (self.ckpt_dir / "latest.pt").exists():
            raise CheckpointError(
                f"{self.ckpt_dir} already holds a run (latest.pt); resume it with --resume_from_checkpoint latest, "
                f"or choose another --checkpoint_dir. Nothing was overwritten.")

        self.cache = build_pairs(cfg.data, force=force_rebuild, progress=progress)
        self.train_set, self.val_set = FramePairs(self.cache, "train"), FramePairs(self.cache, "val")
        if len(self.train_set) < t.batch_size:
            raise ValueError(f"only {len(self.train_set)} training pairs, fewer than one batch of {t.batch_size}")

        torch.manual_seed(t.seed)
        self.diffusion = Diffusion(cfg.diffusion)
        self.model = channels_last(build_model(cfg).to(self.device))
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=True)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / max(1, t.warmup_steps)))
        self.use_amp = t.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.noise_gen = torch.Generator(device=self.device).manual_seed(t.seed + 1)
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.best_val = math.inf
        self.last_val = math.nan
        self.tb_dir = Path(t.tensorboard_dir or data_dir() / "tensorboard") / f"{t.run_name_prefix}_{cfg.preset}_{time.strftime('%Y%m%d-%H%M%S')}"
        if state is not None:
            self._restore(state)
        self.batches_per_epoch = len(self.train_set) // t.batch_size

    # --- checkpoints -------------------------------------------------------------------

    def _load_for_resume(self, path: Path) -> dict:
        state = load_checkpoint(path)
        saved = state["config"]
        now = self.cfg.to_dict()
        arch = config_differences(saved["model"], now["model"], "model.") + config_differences(saved["diffusion"], now["diffusion"], "diffusion.")
        if arch:
            raise CheckpointError(f"{path} was trained with a different architecture; differing fields:\n  " + "\n  ".join(arch)
                                  + "\nUse the same model flags (or --preset) as that run, or start a new run in another --checkpoint_dir.")
        other = config_differences(saved["data"], now["data"], "data.") + [
            d for d in config_differences(saved["train"], now["train"], "train.") if d.split(":")[0].split(".")[1] not in RESUMABLE_CHANGES]
        if other:
            raise CheckpointError(f"{path} belongs to a run with other settings; resuming would not continue it:\n  "
                                  + "\n  ".join(other))
        return state

    def _state(self) -> dict:
        return {
            "model": self.model.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
            "best_val_loss": self.best_val, "last_val_loss": self.last_val,
            "rng": {"torch": torch.get_rng_state(), "noise": self.noise_gen.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "config": self.cfg.to_dict(), "tensorboard_dir": str(self.tb_dir), "parameters": count_parameters(self.model),
        }

    def _restore(self, s: dict) -> None:
        self.model.load_state_dict(s["model"])
        self.ema.load_state_dict(s["ema"])
        self.opt.load_state_dict(s["optimizer"])
        self.sched.load_state_dict(s["scheduler"])
        self.scaler.load_state_dict(s["scaler"])
        self.epoch, self.batch_in_epoch, self.step = s["epoch"], s["batch_in_epoch"], s["step"]
        self.best_val, self.last_val = s["best_val_loss"], s["last_val_loss"]
        torch.set_rng_state(s["rng"]["torch"])
        self.noise_gen.set_state(s["rng"]["noise"].cpu())  # generator states are CPU byte tensors
        if s["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["rng"]["cuda"])
        self.tb_dir = Path(s["tensorboard_dir"])
        self._truncate_metrics(self.step)

    def _save(self, name: str) -> Path:
        return save_checkpoint(self._state(), self.ckpt_dir / name)

    # --- metrics log (one JSON object per line; rewritten on resume) ------------------------

    def _log(self, **row) -> None:
        with open(self.ckpt_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def _truncate_metrics(self, step: int) -> None:
        path = self.ckpt_dir / "metrics.jsonl"
        if not path.exists():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill: drop it
                continue
            if row.get("step", 0) <= step:
                keep.append(line)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, path)

    # --- the loop ------------------------------------------------------------------------

    def _batches(self, epoch: int, start: int):
        loader = torch.utils.data.DataLoader(
            self.train_set, batch_size=self.cfg.train.batch_size, drop_last=True,
            sampler=_epoch_order(len(self.train_set), self.cfg.train.seed, epoch).tolist(),
            num_workers=self.cfg.train.num_workers)
        for i, batch in enumerate(loader):
            if i >= start:
                yield i, batch

    def _loss(self, net, fut: torch.Tensor, cur: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.cfg.train.objective == "regression":
            return regression_loss(net, fut, cur, self.cfg.diffusion.residual)
        return self.diffusion.training_loss(net, fut, cur, generator=generator)

    @torch.no_grad()
    def validate(self) -> float:
        """Mean loss of the EMA weights on the validation episodes, with fixed noise."""
        net = self.ema.module.eval()
        g = torch.Generator(device=self.device).manual_seed(self.cfg.train.seed + 12345)
        loader = torch.utils.data.DataLoader(self.val_set, batch_size=max(self.cfg.train.batch_size, 32))
        total, n = 0.0, 0
        for cur, fut in loader:
            cur, fut = cur.to(self.device), fut.to(self.device)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
                loss = self._loss(net, fut, cur, g)
            total += float(loss) * len(cur)
            n += len(cur)
        return total / max(n, 1)

    @torch.no_grad()
    def sample_grid(self, n: int = 4) -> np.ndarray:
        """Rows of current | predicted (DDIM) | actual for fixed validation pairs, uint8."""
        idx = np.linspace(0, len(self.val_set) - 1, n).astype(int)
        cur = torch.stack([self.val_set[i][0] for i in idx]).to(self.device)
        fut = torch.stack([self.val_set[i][1] for i in idx])
        g = torch.Generator(device=self.device).manual_seed(0)
        if self.cfg.train.objective == "regression":
            pred = regression_predict(self.ema.module.eval(), cur, self.cfg.diffusion.residual).clamp(-1, 1)
        else:
            pred = self.diffusion.ddim_sample(self.ema.module.eval(), cur, steps=self.cfg.train.sample_steps, generator=g)
        imgs = [to_image(x) for x in (cur, pred, fut)]
        return image_grid([[imgs[0][i], imgs[1][i], imgs[2][i]] for i in range(n)])

    def fit(self) -> TrainResult:
        from torch.utils.tensorboard import SummaryWriter

        t = self.cfg.train
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        fresh = self.step == 0
        writer = SummaryWriter(str(self.tb_dir), purge_step=None if fresh else self.step + 1)
        if fresh:
            self._add_graph(writer)
        t0, samples, stopped_early = time.time(), 0, False
        deadline = t0 + 60 * t.max_minutes if t.max_minutes else math.inf
        bar = tqdm(total=t.epochs * self.batches_per_epoch, initial=self.epoch * self.batches_per_epoch + self.batch_in_epoch,
                   desc=f"train {self.cfg.preset}", unit="step", disable=not self.progress)
        try:
            while self.epoch < t.epochs and not stopped_early:
                self.model.train()
                for i, (cur, fut) in self._batches(self.epoch, self.batch_in_epoch):
                    loss, gnorm = self._train_step(cur.to(self.device), fut.to(self.device))
                    self.step += 1
                    self.batch_in_epoch = i + 1
                    samples += len(cur)
                    self._log(step=self.step, epoch=self.epoch, loss=loss, lr=self.sched.get_last_lr()[0], grad_norm=gnorm)
                    if self.step % t.log_freq == 0:
                        writer.add_scalar("loss/train", loss, self.step)
                        writer.add_scalar("lr", self.sched.get_last_lr()[0], self.step)
                        writer.add_scalar("grad_norm", gnorm, self.step)
                    if t.log_images and self.step % t.log_image_every == 0:
                        writer.add_image("samples/current|predicted|actual", self.sample_grid(), self.step, dataformats="HWC")
                        self.model.train()
                    bar.update()
                    bar.set_postfix(loss=f"{loss:.4f}", epoch=self.epoch)
                    if time.time() > deadline:
                        stopped_early = True
                        break
                if stopped_early:
                    self._save("latest.pt")
                    bar.write(f"stopped after {t.max_minutes:.1f} minutes at epoch {self.epoch}, step {self.step}; "
                              f"resume with --resume_from_checkpoint latest")
                    break
                self._end_epoch(writer, bar)
        finally:
            bar.close()
        writer.add_hparams({k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in self._hparams().items()},
                           {"hparam/final_val_loss": self.last_val, "hparam/best_val_loss": self.best_val}, run_name=".")
        writer.close()
        seconds = time.time() - t0
        return TrainResult(self.ckpt_dir, self.tb_dir, self.epoch, self.step, self.last_val, self.best_val, seconds,
                           samples / max(seconds, 1e-9), stopped_early, count_parameters(self.model))

    def _train_step(self, cur: torch.Tensor, fut: torch.Tensor) -> tuple[float, float]:
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
            loss = self._loss(self.model, fut, cur, self.noise_gen)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {float(loss)} at step {self.step + 1} (epoch {self.epoch}); stopped without saving. "
                f"The last good checkpoints in {self.ckpt_dir} are intact: lower --learning_rate and resume from one.")
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        gnorm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip))
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.ema.update_parameters(self.model)
        return loss.item(), gnorm

    def _end_epoch(self, writer, bar) -> None:
        t = self.cfg.train
        self.last_val = self.validate()
        writer.add_scalar("loss/val", self.last_val, self.step)
        self._log(step=self.step, epoch=self.epoch, val_loss=self.last_val)
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        improved = self.last_val < self.best_val
        if improved:
            self.best_val = self.last_val
        if improved and t.save_best:
            self._save("best.pt")
        if self.epoch % t.checkpoint_freq == 0:
            self._save(f"epoch_{self.epoch:04d}.pt")
        self._save("latest.pt")
        bar.write(f"epoch {self.epoch}/{t.epochs}: val loss {self.last_val:.5f}" + (" (best)" if improved else ""))

    def _add_graph(self, writer) -> None:
        m = self.cfg.model
        x = torch.zeros(1, m.image_channels, m.image_size, m.image_size, device=self.device)
        was_training = self.model.training
        self.model.eval()
        with warnings.catch_warnings():  # tracing warns about the input-shape check; harmless
            warnings.simplefilter("ignore")
            writer.add_graph(self.model, (x, torch.zeros(1, dtype=torch.long, device=self.device), x))
        self.model.train(was_training)

    def _hparams(self) -> dict:
        d = self.cfg.to_dict()
        return {f"{k}.{kk}": vv for k in ("data", "model", "diffusion", "train") for kk, vv in d[k].items()}


def train(cfg: RunConfig, resume: str | None = None, progress: bool = True, force_rebuild: bool = False) -> TrainResult:
    return Trainer(cfg, resume=resume, progress=progress, force_rebuild=force_rebuild).fit()


def with_overrides(cfg: RunConfig, **groups: dict) -> RunConfig:
    """A copy of cfg with fields replaced per concern, e.g. with_overrides(cfg, train={"epochs": 3})."""
    parts = {k: replace(getattr(cfg, k), **v) for k, v in groups.items() if v}
    return replace(cfg, **parts)
