"""Use a trained model: load a checkpoint and predict future frames with a real sampler."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from kitchen_lib.base.device import pick_device
from kitchen_lib.base.images import image_grid, to_image, to_tensor
from kitchen_lib.data.cache import build_pairs
from kitchen_lib.data.conditioning import ConditioningConfig, pair_inputs
from kitchen_lib.data.pairs import PairsCache
from kitchen_lib.model.diffusion import SamplerConfig
from kitchen_lib.model.frame_model import FrameModel
from kitchen_lib.model.unet import channels_last
from kitchen_lib.training.checkpoint import CheckpointError, inference_weights, load_checkpoint
from kitchen_lib.training.config import RunConfig, build_model


@dataclass
class Predictor:
    """A trained model on a device, with the config it was trained with; works on uint8 frames."""

    model: FrameModel
    config: RunConfig
    device: torch.device

    @torch.no_grad()
    def predict(self, current: np.ndarray, sampler: SamplerConfig | None = None, seed: int = 0,
                progress: bool = False, context: np.ndarray | None = None, vector: np.ndarray | None = None,
                x0: bool = False) -> np.ndarray:
        """uint8 (B, H, W, C) or (H, W, C) current frames -> predicted future frames, same shape.

        `sampler` defaults to the one the run chose (`config.sampler`). A world model also takes
        its context, uint8 (B, N, H, W, C), and its raw conditioning vector (B, D) (see
        `conditioning.pair_inputs`). x0=True returns the network's one-step estimate instead."""
        single = current.ndim == 3
        frames, context, vector = (current[None], _batch(context), _batch(vector)) if single else (current, context, vector)
        want = (self.config.data.size, self.config.data.size, self.config.data.channels)
        if frames.shape[1:] != want:
            raise ValueError(f"this model takes frames shaped {want} (H, W, C); got {frames.shape[1:]}")
        g = torch.Generator(device=self.device).manual_seed(seed)
        cur = to_tensor(frames).to(self.device)
        ctx = None if context is None else to_tensor(context).flatten(1, 2).to(self.device)  # (B, N*C, H, W)
        vec = None if vector is None else torch.as_tensor(vector, dtype=torch.float32, device=self.device)
        if x0:
            out = self.model.predict_x0(cur, g, ctx, vec)
        else:
            out = self.model.predict(cur, sampler or self.config.sampler, g, progress, ctx, vec)
        out = to_image(out)
        return out[0] if single else out

    def predict_pairs(self, inputs: dict[str, np.ndarray], sampler: SamplerConfig | None = None, seed: int = 0,
                      progress: bool = False, x0: bool = False) -> np.ndarray:
        """Predict from `conditioning.pair_inputs(...)`: current frames and whatever else the model takes."""
        return self.predict(inputs["current"], sampler, seed, progress, inputs.get("context"), inputs.get("vector"), x0)

    def inputs(self, cache: PairsCache, split: str = "test", max_pairs: int | None = None) -> dict[str, np.ndarray]:
        """The pairs of a split with what this model is conditioned on (evenly thinned)."""
        return pair_inputs(cache, split, self.config.conditioning, max_pairs)

    @property
    def conditioning(self) -> ConditioningConfig:
        return self.config.conditioning

    @property
    def objective(self) -> str:
        return self.model.objective

    @property
    def k(self) -> int:
        return self.config.data.k

    @property
    def sampler(self) -> SamplerConfig:
        """The run's default sampler."""
        return self.config.sampler


def load_predictor(checkpoint: str | Path, ema: bool = True, device: str = "auto") -> Predictor:
    """Load a checkpoint for inference (EMA weights by default)."""
    state = load_checkpoint(checkpoint)
    try:
        cfg = RunConfig.from_dict(state["config"])
        model = build_model(cfg)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{checkpoint}: its config cannot be read or describes no valid model ({e})") from e
    try:
        weights = inference_weights(state, ema)
    except CheckpointError as e:
        raise CheckpointError(f"{checkpoint}: {e}") from e
    try:
        model.net.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{checkpoint}: weights do not fit the architecture in its own config ({e})") from e
    dev = pick_device(device)
    model.net = channels_last(model.net.to(dev))
    return Predictor(model.eval(), cfg, dev)


def pairs_for(predictor: Predictor, dataset: str | None = None) -> PairsCache:
    """The pairs cache matching the model's data settings, optionally on another dataset."""
    data = predictor.config.data if dataset is None else replace(predictor.config.data, dataset=dataset, max_episodes=None)
    return build_pairs(data, root=predictor.config.root() / "pairs")


def prediction_grid(predictor: Predictor, cache: PairsCache, split: str = "test", n: int = 8,
                    sampler: SamplerConfig | None = None, seed: int = 0, progress: bool = False) -> np.ndarray:
    """A uint8 grid with rows current | predicted | actual for n pairs spread over a split."""
    inputs = predictor.inputs(cache, split, n)
    pred = predictor.predict_pairs(inputs, sampler, seed=seed, progress=progress)
    return image_grid([[c, p, f] for c, p, f in zip(inputs["current"], pred, inputs["future"], strict=True)])


def _batch(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.asarray(a)[None]
