"""Command-line flags generated from the config dataclasses: one flag per field, named like it.

`add_config_flags(parser, ["data", "train"])` adds `--k`, `--size`, ..., `--epochs`, ... with
the field's type, its choices and its comment as help. A flag that is not given leaves the
preset's value alone, so `config_from_args` is "the preset, with what the user typed on top".
The original project's flag names (`--k_step_future`, `--img_resolution`, ...) are aliases.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import re
import typing
from pathlib import Path

from kitchen_lib.base.device import check_device
from kitchen_lib.base.errors import DestinationError, UserError
from kitchen_lib.base.paths import check_destination
from kitchen_lib.data.examples import ConditioningConfig
from kitchen_lib.data.generate import GenerateConfig
from kitchen_lib.data.pairs import PairsConfig
from kitchen_lib.data.policies import POLICIES
from kitchen_lib.data.render import QUALITIES
from kitchen_lib.model.diffusion import LOSS_WEIGHTINGS, PREDICTIONS, SCHEDULES, DiffusionConfig
from kitchen_lib.model.frame_model import OBJECTIVES
from kitchen_lib.model.samplers import SAMPLERS, SamplerConfig
from kitchen_lib.model.unet import UNetConfig
from kitchen_lib.training.config import RunConfig, TrainConfig, preset, with_overrides

GROUPS: dict[str, type] = {"data": PairsConfig, "model": UNetConfig, "diffusion": DiffusionConfig, "train": TrainConfig,
                           "conditioning": ConditioningConfig, "sampler": SamplerConfig, "generate": GenerateConfig}
# Where a field's own name would be unclear on a command line shared by several concerns.
FLAG_NAMES = {("sampler", "name"): "sampler", ("sampler", "steps"): "sampling_steps"}
CHOICES = {("data", "quality"): QUALITIES, ("diffusion", "schedule"): SCHEDULES, ("diffusion", "prediction"): PREDICTIONS,
           ("diffusion", "loss_weighting"): LOSS_WEIGHTINGS, ("train", "objective"): OBJECTIVES,
           ("sampler", "name"): SAMPLERS,  # the live registry, read when a parser is built
           ("generate", "policy"): POLICIES}
# Fields that are no flag: set from the environment (torchrun's WORLD_SIZE), never typed.
NOT_FLAGS = {("train", "world_size")}
# The original project's names (and our own earlier ones) for the same fields.
ALIASES = {"k": ["k_step_future"], "size": ["img_resolution"], "num_workers": ["num_workers_loader"],
           "base_channels": ["model_base_channels"], "channel_mults": ["model_channel_mults"],
           "num_res_blocks": ["model_num_res_blocks"], "time_emb_dim": ["model_time_emb_dim"],
           "time_mlp_dim": ["model_time_emb_mlp_dim"], "dropout": ["model_dropout_rate"],
           "timesteps": ["diffusion_timesteps"], "save_best": ["save_best_model"],
           "tensorboard_dir": ["tensorboard_log_dir"], "run_name_prefix": ["tensorboard_run_name_prefix"],
           "sampling_steps": ["steps"]}


def _comments(cls: type) -> dict[str, str]:
    """The trailing comment of each field in the dataclass's source: the flag's help."""
    found = re.findall(r"^\s+(\w+): [^=\n]+=[^#\n]*#\s*(.+)$", inspect.getsource(cls), flags=re.M)
    return dict(found)


def _parse_tuple(flag: str):
    def parse(text: str) -> tuple[int, ...]:
        try:
            return tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes whole numbers separated by commas, e.g. 1,2,3 (got {text!r})") from None
    return parse


def _parse_optional(kind: type, flag: str):
    def parse(text: str):
        if text.lower() == "none":
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a {kind.__name__} or 'none' (got {text!r})") from None
    return parse


def flag_name(group: str, field: str) -> str:
    return FLAG_NAMES.get((group, field), field)


def add_config_flags(parser: argparse.ArgumentParser, groups: list[str]) -> None:
    """One flag per field of the named config groups; absent flags leave the preset's value."""
    for group in groups:
        cls = GROUPS[group]
        hints, comments = typing.get_type_hints(cls), _comments(cls)
        section = parser.add_argument_group(f"{group} ({cls.__name__})")
        for f in dataclasses.fields(cls):
            if (group, f.name) in NOT_FLAGS:
                continue
            name = flag_name(group, f.name)
            names = [f"--{name}"] + [f"--{a}" for a in ALIASES.get(name, [])]
            kw = {"dest": f"{group}.{f.name}", "default": argparse.SUPPRESS, "help": comments.get(f.name)}
            kind, args = hints[f.name], typing.get_args(hints[f.name])
            if kind is bool:
                kw["action"] = argparse.BooleanOptionalAction
            elif typing.get_origin(kind) is tuple:
                kw["type"], kw["metavar"] = _parse_tuple(names[0]), "N,N,..."
            elif type(None) in args:
                inner = next(a for a in args if a is not type(None))
                kw["type"] = _parse_optional(inner, names[0])
            else:
                kw["type"] = kind
            if (group, f.name) in CHOICES:
                kw["choices"] = list(CHOICES[(group, f.name)])
            elif kind is not bool:
                kw.setdefault("metavar", name.upper())
            section.add_argument(*names, **kw)


def add_original_flags(parser: argparse.ArgumentParser) -> None:
    """The original project's flags that are not one field: kept so its commands still work."""
    p = parser.add_argument_group("the original project's flags")
    p.add_argument("--disable_amp", dest="train.amp", action="store_false", default=argparse.SUPPRESS,
                   help="same as --no-amp")
    p.add_argument("--model_attention_resolutions_divisor", type=int, default=None,
                   help="attention at frame size / divisor pixels (4: 32px for 128px frames); a power of two")
    p.add_argument("--log_image_freq_multiplier", type=int, default=None, help="sample images every log_freq x this steps")


def given(args: argparse.Namespace, group: str) -> dict:
    """The fields of one group the user set on the command line."""
    return {k.split(".", 1)[1]: v for k, v in vars(args).items() if k.startswith(f"{group}.")}


def config_from_args(args: argparse.Namespace, data_only: bool = False) -> RunConfig:
    """The preset's RunConfig with every flag the user gave laid over it, checked: all of it, or
    (data_only: `generate`, `pairs`) only the data settings, which a cache of any size needs
    whatever model may train on it later."""
    groups = {g: given(args, g) for g in GROUPS}
    divisor = getattr(args, "model_attention_resolutions_divisor", None)
    if divisor is not None:
        if divisor < 1 or divisor & (divisor - 1):
            raise UserError(f"--model_attention_resolutions_divisor must be a power of two (got {divisor})")
        groups["model"]["attention_levels"] = (int(math.log2(divisor)),)
    cfg = with_overrides(preset(args.preset), **groups)
    multiplier = getattr(args, "log_image_freq_multiplier", None)
    if multiplier is not None:
        cfg = with_overrides(cfg, train={"log_image_every": cfg.train.log_freq * multiplier})
    if getattr(args, "dataset_dir", None):
        cfg = dataclasses.replace(cfg, data_dir=args.dataset_dir)
    if data_only:
        cfg.data.validate()
        return cfg
    cfg.validate()
    check_device(cfg.train.device)  # here, not in validate(): a checkpoint trained on a GPU loads anywhere
    return cfg


def destinations(cfg: RunConfig, data_dir_given: bool, train: bool) -> list[tuple[Path, str]]:
    """The folders `pairs` (train=False) or `train` writes, each with the flag that chose it."""
    data_flag = "--dataset_dir" if data_dir_given else "the data folder (--dataset_dir, KITCHEN_DATA_DIR)"
    found = [(cfg.root() / "pairs", data_flag)]
    if train:
        tb = cfg.train.tensorboard_dir
        found += [(cfg.checkpoint_dir(), "--checkpoint_dir" if cfg.train.checkpoint_dir else data_flag),
                  (Path(tb) if tb else cfg.root() / "tensorboard", "--tensorboard_dir" if tb else data_flag)]
    return found


def sampler_from_args(args: argparse.Namespace, default: SamplerConfig | None = None) -> SamplerConfig:
    """The sampler flags laid over `default` (a checkpoint's own sampler); checked at once.

    Without a default (before a checkpoint is loaded, to check the flags early) they are laid over
    SamplerConfig(): the result then only says the flags are valid, it is no run's sampler."""
    fields = given(args, "sampler")
    if default is None or ("name" in fields and fields["name"] != default.name):
        # The checkpoint's settings (its DDIM steps) are not the named sampler's; its guidance,
        # which applies to any sampler, is kept.
        keep = {} if default is None else {"guidance": default.guidance}
        default = SamplerConfig(fields["name"], **keep) if "name" in fields else SamplerConfig()
    sampler = dataclasses.replace(default, **fields)
    sampler.validate()
    return sampler


# Value types for the subcommands' own flags: a bad value is an argparse error that names the flag.

def at_least(lowest: float, kind: type = int):
    """An argparse type: a number of `kind` no smaller than `lowest` (the message names the flag)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {'whole number' if kind is int else 'number'}, got {text!r}") from None
        if not value >= lowest:
            raise argparse.ArgumentTypeError(f"must be at least {lowest:g} (got {text})")
        return value
    return parse


def device(text: str) -> str:
    try:
        return check_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive(text: str) -> float:
    value = at_least(0.0, float)(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be positive (got {text})")
    return value


def output(*suffixes: str):
    """An argparse type for a file to write: one of `suffixes`, in a folder that can be written."""
    def parse(text: str) -> str:
        path = Path(text)
        if path.suffix.lower() not in suffixes:
            raise argparse.ArgumentTypeError(f"{text!r}: the file name must end in {' or '.join(suffixes)}")
        try:
            check_destination(path.parent, "the folder of")
        except DestinationError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} is a folder: give a file name")
        return text
    return parse
