"""A model handed to the Trainer instead of the one its config builds must be that model.

A checkpoint records the run's config, and resuming and load_predictor rebuild the network
from it (build_model), so the config has to describe the network saved: a model the config
does not describe is refused rather than saved under a config that lies about it. Its weights
are free (another init, or a trained model to fine-tune); its architecture is not.
"""

from __future__ import annotations

from dataclasses import fields

import torch

from kitchen_lib.model.frame_model import FrameModel
from kitchen_lib.training.config import RunConfig, build_model

MODEL_FIELDS = ("objective", "context_noise", "action_dropout")
NET_FIELDS = ("image_size", "image_channels", "context_frames", "vector_dim", "action_slice")


def model_differences(model: FrameModel, cfg: RunConfig) -> list[str]:
    """How `model` differs from the one `build_model(cfg)` makes (its weights aside)."""
    if not isinstance(model, FrameModel):
        return [f"a {type(model).__name__}, not a FrameModel"]
    with torch.device("meta"):  # the config's model as shapes only: no memory, no draws from the RNGs
        want = build_model(cfg)
    diffs = [_say(n, getattr(model, n), getattr(want, n)) for n in MODEL_FIELDS if getattr(model, n) != getattr(want, n)]
    diffs += _field_differences("diffusion", model.diffusion.cfg, want.diffusion.cfg)
    if type(model.net) is not type(want.net):
        return [*diffs, f"net: a {type(model.net).__name__}, config builds a {type(want.net).__name__}"]
    diffs += _field_differences("model", model.net.cfg, want.net.cfg)
    diffs += [_say(f"net.{n}", getattr(model.net, n), getattr(want.net, n))
              for n in NET_FIELDS if getattr(model.net, n) != getattr(want.net, n)]
    have = {k: tuple(v.shape) for k, v in model.net.state_dict().items()}
    shapes = {k: tuple(v.shape) for k, v in want.net.state_dict().items()}
    if have != shapes:  # a layer swapped after building: the fields above cannot see it
        odd = sorted(set(have.items()) ^ set(shapes.items()))
        diffs.append(f"net weights: {len(odd)} entries differ in name or shape, e.g. {odd[0][0]}")
    return diffs


def _field_differences(prefix: str, have, want) -> list[str]:
    """The fields of two config dataclasses that differ, as `prefix.field: have, config says want`."""
    return [_say(f"{prefix}.{f.name}", getattr(have, f.name), getattr(want, f.name))
            for f in fields(want) if getattr(have, f.name) != getattr(want, f.name)]


def _say(name: str, have, want) -> str:
    return f"{name}: the model's {have!r}, the config's {want!r}"


def check_given_model(model: FrameModel, cfg: RunConfig) -> None:
    """Raise ValueError, naming what differs, unless `model` is the architecture `cfg` describes."""
    diffs = model_differences(model, cfg)
    if diffs:
        raise ValueError("the model handed to the Trainer is not the one its config describes, so its checkpoints "
                         "would record the wrong architecture:\n  " + "\n  ".join(diffs) +
                         "\nBuild it with build_model(cfg), or change the config to describe it.")
