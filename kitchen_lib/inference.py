"""Use a trained model: load a checkpoint and predict future frames with a real sampler."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from kitchen_lib.checkpoint import CheckpointError, load_checkpoint
from kitchen_lib.diffusion import DEFAULT_DDIM_STEPS, Diffusion
from kitchen_lib.images import image_grid
from kitchen_lib.pairs import PairsCache, build_pairs, to_image, to_tensor
from kitchen_lib.train import RunConfig, build_model, pick_device, regression_predict
from kitchen_lib.unet import ConditionalUNet, channels_last


@dataclass
class Predictor:
    """A trained network with its diffusion process and config."""

    model: ConditionalUNet
    diffusion: Diffusion
    config: RunConfig
    device: torch.device

    @torch.no_grad()
    def predict(self, current: np.ndarray, sampler: str = "ddim", steps: int | None = DEFAULT_DDIM_STEPS, eta: float = 0.0,
                seed: int = 0, progress: bool = False) -> np.ndarray:
        """uint8 (B, H, W, C) or (H, W, C) current frames -> predicted future frames, same shape."""
        single = current.ndim == 3
        frames = current[None] if single else current
        want = (self.config.data.size, self.config.data.size, self.config.data.channels)
        if frames.shape[1:] != want:
            raise ValueError(f"this model takes frames shaped {want} (H, W, C); got {frames.shape[1:]}")
        cond = to_tensor(frames).to(self.device)
        if self.objective == "regression":
            out = to_image(regression_predict(self.model, cond, self.config.diffusion.residual).clamp(-1, 1))
        else:
            g = torch.Generator(device=self.device).manual_seed(seed)
            out = to_image(self.diffusion.sample(self.model, cond, sampler, steps, eta, generator=g, progress=progress))
        return out[0] if single else out

    @property
    def objective(self) -> str:
        return self.config.train.objective

    @property
    def k(self) -> int:
        return self.config.data.k


def load_predictor(checkpoint: str | Path, ema: bool = True, device: str = "auto") -> Predictor:
    """Load a checkpoint for inference (EMA weights by default)."""
    state = load_checkpoint(checkpoint)
    cfg = RunConfig.from_dict(state["config"])
    dev = pick_device(device)
    model = build_model(cfg)
    if ema:
        prefix = "module."
        weights = {k[len(prefix):]: v for k, v in state["ema"].items() if k.startswith(prefix)}
    else:
        weights = state["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{checkpoint}: weights do not fit the architecture in its own config ({e})") from e
    return Predictor(channels_last(model.to(dev)).eval(), Diffusion(cfg.diffusion), cfg, dev)


def pairs_for(predictor: Predictor, dataset: str | None = None) -> PairsCache:
    """The pairs cache matching the model's data settings, optionally on another dataset."""
    data = predictor.config.data if dataset is None else replace(predictor.config.data, dataset=dataset, max_episodes=None)
    return build_pairs(data)


def prediction_grid(predictor: Predictor, cache: PairsCache, split: str = "test", n: int = 8, sampler: str = "ddim",
                    steps: int | None = DEFAULT_DDIM_STEPS, seed: int = 0) -> np.ndarray:
    """A uint8 grid with rows current | predicted | actual for n pairs spread over a split."""
    idx = cache.frame_indices(split)
    if len(idx) == 0:
        raise ValueError(f"the {split} split has no pairs")
    rows = idx[np.linspace(0, len(idx) - 1, min(n, len(idx))).astype(int)]
    cur, fut = cache.frames[rows[:, 0]], cache.frames[rows[:, 1]]
    pred = predictor.predict(np.asarray(cur), sampler, steps, seed=seed, progress=True)
    return image_grid([[c, p, f] for c, p, f in zip(cur, pred, fut, strict=True)])


def find_checkpoint(preset: str = "cpu", objective: str = "diffusion") -> Path | None:
    """The newest best.pt of a preset's runs: by the CLI (data/checkpoints/<preset>) or
    notebook 05 (data/checkpoints/notebook05-<preset>-<time>); None if there is none."""
    from kitchen_lib.paths import data_dir

    root = data_dir() / "checkpoints"
    suffix = "" if objective == "diffusion" else f"-{objective}"
    runs = [root / f"{preset}{suffix}"] + [p for p in root.glob(f"notebook05-{preset}-*{suffix}")
                                            if p.name.endswith(suffix) and (suffix or not p.name.endswith("-regression"))]
    found = [r / "best.pt" for r in runs if (r / "best.pt").is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None
