"""Use a trained model: load a checkpoint and predict future frames with a real sampler."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from kitchen_lib.base.device import pick_device
from kitchen_lib.base.example import inputs_of, to_tensors
from kitchen_lib.base.images import image_grid, to_image
from kitchen_lib.data.cache import PairsCache
from kitchen_lib.data.cache_builder import build_pairs
from kitchen_lib.data.examples import ConditioningConfig, VectorLayout, gather
from kitchen_lib.model.frame_model import FrameModel
from kitchen_lib.model.samplers import SamplerConfig
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
    def predict(self, inputs: dict[str, np.ndarray], sampler: SamplerConfig | None = None, seed: int = 0,
                progress: bool = False, x0: bool = False) -> np.ndarray:
        """An example's inputs as the cache gives them (kitchen_lib.base.example: uint8 "current"
        (B, H, W, C) and, for a world model, "context" and "vector"; or one example without the
        B axis) -> predicted future frames, uint8, shaped like "current".

        `sampler` defaults to the one the run chose (`config.sampler`). x0=True returns the
        network's one-step estimate instead."""
        single = np.ndim(inputs["current"]) == 3
        batch = {key: np.asarray(v)[None] for key, v in inputs_of(inputs).items()} if single else inputs_of(inputs)
        want = (self.config.data.size, self.config.data.size, self.config.data.channels)
        if batch["current"].shape[1:] != want:
            raise ValueError(f"this model takes frames shaped {want} (H, W, C); got {batch['current'].shape[1:]}")
        g = torch.Generator(device=self.device).manual_seed(seed)
        tensors = to_tensors(batch, self.device)
        out = self.model.predict_x0(tensors, g) if x0 else self.model.predict(tensors, sampler or self.sampler, g, progress)
        out = to_image(out)
        return out[0] if single else out

    def inputs(self, cache: PairsCache, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The examples of (episode, step) rows (e.g. `cache.select("test", 64)`) with what this
        model is conditioned on, and their true futures."""
        return gather(cache, rows, self.conditioning)

    @property
    def vector(self) -> VectorLayout:
        """The layout of this model's conditioning vector."""
        return self.conditioning.vector(self.k)

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
    inputs = predictor.inputs(cache, cache.select(split, n))
    pred = predictor.predict(inputs, sampler, seed=seed, progress=progress)
    return image_grid([[c, p, f] for c, p, f in zip(inputs["current"], pred, inputs["future"], strict=True)])
