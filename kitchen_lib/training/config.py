"""Run configuration: one dataclass per concern, gathered in `RunConfig`, and the named presets.

`RunConfig()` is the base: the course's `cpu` setup (64x64 frames on 4x4 patches, a U-Net
sized for 8 minutes of training on a 2-core CPU). Every other preset is the base with the differences
written out in `PRESETS`, so a reader sees in one place what each preset changes:

    preset("cpu")                     the base itself
    preset("smoke")                   tiny data and model: a whole run in seconds (tests, notebooks' smoke mode)
    preset("seed")                    the original project's 128x128 setup, for a GPU
    preset("cpu-world")               the cpu budget as a world model: actions, joint state, past frames
    preset("smoke-world")             smoke, as a world model
    preset("cpu-drive")               cpu-world on the expert's and exploration episodes: the model to drive
    preset("smoke-drive")             smoke-world, likewise
    with_overrides(cfg, train={"epochs": 3})   any config with some fields replaced

The model's frame size and channels are the data's (`cfg.data.size`, `cfg.data.channels`),
never set on the model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from kitchen_lib.base.errors import UserError
from kitchen_lib.base.paths import data_dir
from kitchen_lib.data.datasets import (
    EXPLORE_DATASET_ID,
    EXPLORE_SMOKE_DATASET_ID,
    OFFLINE_DATASET_ID,
    SMOKE_DATASET_ID,
    joined,
)
from kitchen_lib.data.examples import ConditioningConfig
from kitchen_lib.data.generate import GenerateConfig
from kitchen_lib.data.pairs import PairsConfig
from kitchen_lib.model.diffusion import DiffusionConfig
from kitchen_lib.model.frame_model import OBJECTIVES, FrameModel
from kitchen_lib.model.samplers import SamplerConfig
from kitchen_lib.model.unet import UNetConfig
from kitchen_lib.training.runs import default_run_dir


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation: how long, how fast, and what is logged and kept."""

    epochs: int = 100
    batch_size: int = 32
    learning_rate: float = 1e-3  # cpu (bench/ablation.py; 3e-4 tied at 5 minutes); cpu-world: 2e-3 (_WORLD)
    weight_decay: float = 0.0
    warmup_steps: int = 100  # optimizer steps of linear learning-rate warm-up
    lr_decay_steps: int | None = None  # cosine decay to lr_final_fraction by this optimizer step (None: constant)
    # Or by this many minutes of training, counted over resumes: for a time budget, whose steps
    # depend on the machine. cpu-drive decays over its 40 (docs/results.md, "a decay over the budget").
    lr_decay_minutes: float | None = None  # cosine decay to lr_final_fraction by this minute of training (None: by steps)
    lr_final_fraction: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    amp: bool = True  # mixed precision (fp16 with a loss scaler), on CUDA only
    # On a CPU that multiplies bf16 in hardware (AMX, AVX512-BF16), the training step and the
    # validation loss under bf16 autocast (weights, optimizer and sampling stay fp32): 1.23x the
    # steps a minute of cpu-world and the same quality a step (docs/results.md, "bf16 on the CPU").
    # Other CPUs, where bf16 is emulated and slow, train in fp32 whatever this says.
    cpu_bf16: bool = True
    device: str = "auto"  # auto: cuda, then mps, then cpu
    seed: int = 0
    # Training on joined datasets (A+B+...): the share of each epoch's pairs drawn from the first
    # (cpu-drive: the expert's), so that more of the others does not crowd it out. None: each
    # pair once an epoch, every dataset in proportion to its pairs.
    first_dataset_share: float | None = None  # the first joined dataset's share of each epoch's pairs (none: by their number)
    num_workers: int = 0  # DataLoader worker processes
    checkpoint_dir: str | None = None  # default: <data dir>/checkpoints/<preset>[-regression]
    checkpoint_freq: int = 1  # also keep epoch_NNNN.pt every N epochs
    save_best: bool = True  # keep best.pt (lowest validation loss)
    tensorboard_dir: str | None = None  # default: <data dir>/tensorboard
    run_name_prefix: str = "kitchen"
    log_freq: int = 20  # optimizer steps between scalar logs
    log_images: bool = True
    log_image_every: int = 300  # optimizer steps between sample-prediction images
    # Stop cleanly, with a checkpoint, after this long (None: run every epoch). cpu: 8 minutes
    # (+3.05 / +4.24 dB over copy after 8 on the test pairs; the targets are +2 / +3.5); cpu-world: 14 (_WORLD).
    max_minutes: float | None = 8
    objective: str = "diffusion"  # or "regression": the same network, MSE straight to the future frame
    # Processes training together (torchrun's WORLD_SIZE): set by the Trainer, not a flag. With
    # batch_size per process, a step sees the global batch, batch_size * world_size.
    world_size: int = 1

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step, over all processes."""
        return self.batch_size * self.world_size

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise UserError(f"unknown objective {self.objective!r}: choose one of {OBJECTIVES}")
        at_least_one = ("epochs", "batch_size", "checkpoint_freq", "log_freq", "log_image_every", "world_size")
        bad = [f"--{n} must be a whole number of at least 1 (got {getattr(self, n)!r})" for n in at_least_one
               if not isinstance(getattr(self, n), int) or getattr(self, n) < 1]
        bad += [f"--{n} must be 0 or more (got {getattr(self, n)!r})" for n in ("warmup_steps", "num_workers", "weight_decay")
                if getattr(self, n) < 0]
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            bad.append(f"--learning_rate must be a positive number (got {self.learning_rate!r})")
        if self.lr_decay_steps is not None and self.lr_decay_steps < 1:
            bad.append(f"--lr_decay_steps must be at least 1, or none (got {self.lr_decay_steps})")
        if self.lr_decay_minutes is not None and not self.lr_decay_minutes > 0:
            bad.append(f"--lr_decay_minutes must be positive, or none (got {self.lr_decay_minutes})")
        if self.lr_decay_steps and self.lr_decay_minutes:
            bad.append("give the decay in --lr_decay_steps or in --lr_decay_minutes, not both "
                       "(--lr_decay_steps none or --lr_decay_minutes none turns one off)")
        if not 0 < self.lr_final_fraction <= 1:
            bad.append(f"--lr_final_fraction must be in (0, 1] (got {self.lr_final_fraction})")
        if not self.grad_clip > 0:
            bad.append(f"--grad_clip must be positive (got {self.grad_clip})")
        if not 0 <= self.ema_decay < 1:
            bad.append(f"--ema_decay must be in [0, 1) (got {self.ema_decay})")
        if self.first_dataset_share is not None and not 0 < self.first_dataset_share < 1:
            bad.append(f"--first_dataset_share must be between 0 and 1, or none (got {self.first_dataset_share})")
        if self.max_minutes is not None and not self.max_minutes > 0:
            bad.append(f"--max_minutes must be positive, or none for no limit (got {self.max_minutes})")
        if bad:
            raise UserError("; ".join(bad))


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs, one dataclass per concern. `RunConfig()` is the `cpu` preset."""

    data: PairsConfig = field(default_factory=PairsConfig)
    # 4x4 patches: the U-Net's levels at 16, 8 and 4 px, 48-96 channels. About the parameters of
    # the 2x2-patch U-Net it replaced (levels at 32-4 px) at 1.8x its optimizer steps a CPU minute,
    # and in 10 minutes the world model then scores what that one did in 20 (docs/results.md, "4x4 patches").
    model: UNetConfig = field(default_factory=lambda: UNetConfig(patch_size=4, base_channels=48, channel_mults=(1, 1, 2)))
    # Trained mostly where DDIM-2 calls the network (t = 999 and 499): t = T u^0.4, 18% of the
    # steps below t = 500 (0.25 left samples no sharper than the regression; 0.5 cost PSNR).
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(timestep_power=0.4))
    train: TrainConfig = field(default_factory=TrainConfig)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)  # the past, actions, joint state
    # The run's default way to predict. DDIM-2 for the cpu presets: on their models it scores the
    # PSNR of DDIM-10 within a few hundredths of a dB (fewer steps commit less to one future) at
    # about a quarter of the time (bench/samplers.py; notebook 07 measures it on the cpu model).
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig("ddim", 2))
    generate: GenerateConfig = field(default_factory=GenerateConfig)  # size of our dataset, if it must be made
    preset: str = "cpu"
    data_dir: str | None = None  # pair caches, checkpoints, logs; default: paths.data_dir()

    def validate(self) -> None:
        self.data.validate()
        self.model.validate(self.data.size)
        self.conditioning.validate()
        self.diffusion.validate()
        self.train.validate()
        self.sampler.validate()
        if self.sampler.guided and self.conditioning.action_dropout == 0:  # else its first sample grid fails
            raise UserError(f"--guidance {self.sampler.guidance:g} needs a model trained with action dropout: add "
                            f"--action_dropout (e.g. 0.1), or leave --guidance at 1")

    def root(self) -> Path:
        return Path(self.data_dir) if self.data_dir else data_dir()

    def checkpoint_dir(self) -> Path:
        if self.train.checkpoint_dir:
            return Path(self.train.checkpoint_dir)
        return default_run_dir(self.preset, self.train.objective, self.root())

    def to_dict(self) -> dict:
        return {"data": asdict(self.data), "model": self.model.to_dict(), "diffusion": asdict(self.diffusion),
                "train": asdict(self.train), "conditioning": asdict(self.conditioning), "sampler": asdict(self.sampler),
                "generate": asdict(self.generate),
                "preset": self.preset}

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        """Also reads the configs of older checkpoints: an option they lack gets the meaning it
        had before it existed, whatever today's default."""
        train = LEGACY_TRAIN | {k: v for k, v in d["train"].items() if k != "sample_steps"}  # that became the run's sampler
        return cls(data=PairsConfig(**d["data"]), model=UNetConfig.from_dict(d["model"]),
                   diffusion=DiffusionConfig(**(LEGACY_DIFFUSION | d["diffusion"])), train=TrainConfig(**train),
                   conditioning=ConditioningConfig(**d.get("conditioning", {})),
                   sampler=SamplerConfig(**d.get("sampler", {})), generate=GenerateConfig(**d.get("generate", {})),
                   preset=d.get("preset", "custom"))


# What a saved config without these fields meant (they were added later).
LEGACY_DIFFUSION = {"residual": False, "loss_weighting": "none", "min_snr_gamma": 5.0}
LEGACY_TRAIN = {"cpu_bf16": False}

_SMOKE = {
    "data": {"dataset": SMOKE_DATASET_ID, "size": 32},
    "generate": {"episodes": 3, "max_steps": 60, "explore_episodes": 3, "explore_max_steps": 60},
    "model": {"base_channels": 16, "channel_mults": (1, 2), "attention_levels": (1,), "time_emb_dim": 32,
              "time_mlp_dim": 64, "dropout": 0.0, "patch_size": 1},
    "diffusion": {"timestep_power": 1.0},
    # fp32: bf16 buys nothing on tensors this small.
    "train": {"epochs": 2, "batch_size": 8, "learning_rate": 5e-4, "warmup_steps": 5, "ema_decay": 0.9,
              "log_freq": 2, "log_image_every": 10, "max_minutes": None, "cpu_bf16": False},
    "sampler": {"steps": 5},
}

# What turns a frame-only preset into a world model (bench/ablation.py --preset cpu-world chose it).
_WORLD = {
    "conditioning": {"context_frames": 2, "actions": True, "proprio": True},
    # The vector scales as well as shifts each res block's features. No dropout: in 10 minutes the
    # model is far from overfitting, and dropout only slowed it (docs/results.md, "without dropout").
    "model": {"adagn": True, "dropout": 0.0},
    # +5.17 / +6.41 dB over copy on the test pairs after 10 minutes at learning rate 2e-3 without
    # dropout (the targets are +5 / +6), and still climbing: 14 leaves a margin and, with cpu's 8
    # and the data's 5, quickstart under 30.
    "train": {"max_minutes": 14, "learning_rate": 2e-3},
}


# What turns a world model into one to drive: exploration beside the expert (the arm anywhere,
# the gripper, objects touched), each dataset split into train/val/test on its own. More data and
# more kinds of motion than cpu-world's: 40 minutes (not in quickstart's 30). On exploration's
# 9,536 test pairs the moving pixels were +4.61 dB over copy after 20 minutes at the expert's share
# 0.4, +4.85 after 40; 40 at share 0.25 reach +5.02, the +5 target at its edge (docs/results.md,
# "40 minutes"). In proportion to their number the expert's pairs would get 13% of each epoch
# beside exploration's 160 episodes; a quarter keeps them at +5.62 / +6.85 on their 1,381 test
# pairs (the target +5 / +6) and gives exploration the rest.
# Its learning rate decays over the 40 minutes, and it trains at more high noise levels than
# cpu-world (exploration's larger motions are laid out there): each beside the preset before it,
# +0.3 / +0.4 dB and +0.2 / +0.2 on the expert's pairs (docs/results.md, "a decay over the budget").
_DRIVE = {"data": {"dataset": joined(OFFLINE_DATASET_ID, EXPLORE_DATASET_ID)},
          "diffusion": {"timestep_power": 0.25},
          "train": {"max_minutes": 40, "first_dataset_share": 0.25, "lr_decay_minutes": 40}}


def _combined(*diffs: dict[str, dict]) -> dict[str, dict]:
    """Preset differences applied one after another, merged per concern."""
    out: dict[str, dict] = {}
    for d in diffs:
        for group, fields in d.items():
            out[group] = out.get(group, {}) | fields
    return out


# 2x2 patches: 4x4 would leave the 32px smoke frames 8x8.
_SMOKE_WORLD = _combined(_WORLD, _SMOKE, {"model": {"patch_size": 2}, "diffusion": {"timestep_power": 0.4}})

# Each preset: what it is for, and what differs from RunConfig() (the `cpu` preset), per concern.
PRESETS: dict[str, tuple[str, dict[str, dict]]] = {
    "cpu": ("the course's frame-only model: 64x64, 4x4 patches, 8 minutes of training on a 2-core CPU", {}),
    "smoke": ("tiny data and model that train in seconds: tests and the notebooks' smoke mode", _SMOKE),
    "cpu-world": ("the cpu recipe as a world model: the k actions, joint state and 2 past frames, 14 minutes", _WORLD),
    "smoke-world": ("the smoke preset as a world model (tests, notebook 08's smoke mode)", _SMOKE_WORLD),
    "cpu-drive": ("cpu-world trained on the expert's and exploration episodes together: the model to drive "
                  "(notebook 09), 40 minutes", _combined(_WORLD, _DRIVE)),
    "smoke-drive": ("the smoke-world preset on the smoke expert and exploration datasets (tests, notebook 09's smoke mode)",
                    _combined(_SMOKE_WORLD, {"data": {"dataset": joined(SMOKE_DATASET_ID, EXPLORE_SMOKE_DATASET_ID)},
                                             "train": {"first_dataset_share": _DRIVE["train"]["first_dataset_share"]}})),
    "seed": ("the original project's 128x128 setup, for a GPU", {
        # The original's: frame size, U-Net (base 32, mults 1,2,3, one res block, attention at
        # 32px, time MLP 512, dropout 0.1), batch 16, learning rate 1e-4, EMA 0.999, no time limit.
        "data": {"size": 128},
        "model": {"base_channels": 32, "channel_mults": (1, 2, 3), "attention_levels": (2,), "time_mlp_dim": 512,
                  "zero_init": True, "patch_size": 1},  # zero-init is ours (see below)
        "train": {"batch_size": 16, "learning_rate": 1e-4, "ema_decay": 0.999, "checkpoint_freq": 5,
                  "log_image_every": 1000, "max_minutes": None},
        "sampler": {"steps": 10},  # not measured at 128px: the library's general default
        # Ours, not the original's: its linear/eps/whole-frame recipe without zero-init fell far
        # below copying the frame (bench/ablation.py); these are what won there.
        "diffusion": {"schedule": "cosine", "prediction": "x0", "residual": True, "timestep_power": 1.0},
    }),
}


def preset(name: str) -> RunConfig:
    """The named preset's RunConfig."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}")
    return with_overrides(RunConfig(preset=name), **PRESETS[name][1])


def with_overrides(cfg: RunConfig, **groups: dict) -> RunConfig:
    """A copy of cfg with fields replaced per concern, e.g. with_overrides(cfg, train={"epochs": 3})."""
    unknown = set(groups) - {"data", "model", "diffusion", "train", "conditioning", "sampler", "generate"}
    if unknown:
        raise UserError(f"no such part of a RunConfig: {sorted(unknown)}")
    parts = {k: replace(getattr(cfg, k), **v) for k, v in groups.items() if v}
    return replace(cfg, **parts)


def build_model(cfg: RunConfig) -> FrameModel:
    """The untrained model a config describes, sized for its data."""
    cfg.validate()
    c = cfg.conditioning
    layout = c.vector(cfg.data.k)
    return FrameModel.build(cfg.model, cfg.data.size, cfg.data.channels, cfg.diffusion, cfg.train.objective,
                            c.context_frames, layout.dim, c.context_noise, c.action_dropout, layout.parts().get("actions"))
