"""Autoregressive rollouts: feed each prediction back as the next current frame.

One rollout step jumps k env steps, so step i predicts frame start + i*k and is compared with
the true frame there. Errors compound: a rollout shows how long the model's kitchen stays
believable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kitchen_lib.base.images import difference_image
from kitchen_lib.base.paths import atomic_path
from kitchen_lib.data.conditioning import episode_vectors
from kitchen_lib.data.pairs import PairsCache
from kitchen_lib.inference.metrics import capped_psnr
from kitchen_lib.inference.predictor import Predictor
from kitchen_lib.model.diffusion import SamplerConfig


@dataclass
class Rollout:
    predicted: np.ndarray  # (horizon + 1, H, W, C) uint8; [0] is the true start frame
    truth: np.ndarray  # (horizon + 1, H, W, C) uint8
    env_steps: np.ndarray  # (horizon + 1,) env step of each frame
    psnr: np.ndarray  # (horizon + 1,) dB, capped
    hold_psnr: np.ndarray  # (horizon + 1,) dB of holding the start frame still: the bar to clear

    def side_by_side(self, pad: int = 2) -> np.ndarray:
        """(horizon + 1, H, 3W + 2 pad, C) frames: truth | prediction | |difference| (x3, brighter)."""
        diff = difference_image(self.truth, self.predicted)
        n, h, _, c = self.truth.shape
        sep = np.full((n, h, pad, c), 255, np.uint8)
        return np.concatenate([self.truth, sep, self.predicted, sep, diff], axis=2)


def max_horizon(num_frames: int, start: int, k: int) -> int:
    return max((num_frames - 1 - start) // k, 0)


def rollout(predictor: Predictor, episode_frames: np.ndarray, start: int, horizon: int,
            sampler: SamplerConfig | None = None, seed: int = 0, actions: np.ndarray | None = None,
            proprio: np.ndarray | None = None) -> Rollout:
    """Predict `horizon` jumps of k env steps from episode_frames[start], feeding predictions back.

    `sampler` defaults to the one the model's run chose. A world model's context is the true
    frames up to `start`, then its own predictions; it is driven by per-step `actions` (T, 9)
    and `proprio` (T+1, 9) (the recorded ones, or another episode's: "what if the robot had
    done that instead")."""
    k = predictor.k
    limit = max_horizon(len(episode_frames), start, k)
    if not 0 <= start < len(episode_frames):
        raise ValueError(f"start {start} is outside the episode (frames 0..{len(episode_frames) - 1})")
    if horizon < 1 or horizon > limit:
        raise ValueError(f"horizon {horizon} does not fit: from step {start}, this {len(episode_frames) - 1}-step episode "
                         f"has room for 1..{limit} rollout steps of k={k}")
    cond = predictor.conditioning
    if (cond.actions and actions is None) or (cond.proprio and proprio is None):
        raise ValueError("this model is conditioned on actions/joint state: pass the episode's (rollout(..., actions=, proprio=))")
    if cond.actions and len(actions) < start + k * horizon:
        raise ValueError(f"{len(actions)} actions do not cover {horizon} rollout steps of k={k} from step {start}")
    frames = [episode_frames[start]]
    for i in range(horizon):
        t = start + i * k  # env step of the current frame
        context = None
        if cond.context_frames:  # true frames before the start, the rollout's own after it
            steps = [max(t - k * j, 0) for j in range(cond.context_frames, 0, -1)]
            context = np.stack([frames[(s - start) // k] if s >= start else episode_frames[s] for s in steps])
        parts = ([actions[t : t + k].reshape(-1)] if cond.actions else []) + ([proprio[t]] if cond.proprio else [])
        vector = np.concatenate(parts).astype(np.float32) if parts else None
        frames.append(predictor.predict(frames[-1], sampler, seed=seed + i, context=context, vector=vector))
    idx = start + k * np.arange(horizon + 1)
    truth = np.asarray(episode_frames[idx])
    pred = np.stack(frames)
    scores = np.array([capped_psnr(t, p) for t, p in zip(truth, pred, strict=True)])
    hold = np.array([capped_psnr(t, truth[0]) for t in truth])
    return Rollout(pred, truth, idx, scores, hold)


def rollout_episode(predictor: Predictor, cache: PairsCache, episode: int, start: int, horizon: int,
                    sampler: SamplerConfig | None = None, seed: int = 0, actions_of: int | None = None) -> Rollout:
    """`rollout` on an episode of a pairs cache, with its recorded actions and joint states when the
    model takes them (`actions_of`: another episode's actions, same env steps)."""
    cond = predictor.conditioning
    actions = proprio = None
    if cond.actions or cond.proprio:
        actions, proprio = episode_vectors(cache, episode)
        if actions_of is not None:
            actions = episode_vectors(cache, actions_of)[0]
    elif actions_of is not None:
        raise ValueError("actions_of needs an action-conditioned model (e.g. --preset cpu-world)")
    return rollout(predictor, cache.episode_frames(episode), start, horizon, sampler, seed, actions, proprio)


def mean_rollouts(predictor: Predictor, cache: PairsCache, split: str = "test", starts: int = 8, horizon: int = 10,
                  sampler: SamplerConfig | None = None, progress: bool = True) -> dict:
    """Mean PSNR per rollout step over `starts` evenly spread starts in every episode of a split
    (recorded actions), beside holding the start frame still: {"rollouts", "horizon", "psnr",
    "hold_psnr", "beats_hold_every_step"}, lists of `horizon` numbers (step 1 first)."""
    from tqdm.auto import tqdm

    jobs = []
    for ep in cache.meta["splits"][split]:
        last = len(cache.episode_frames(ep)) - 1 - horizon * predictor.k
        jobs += [(ep, int(s)) for s in np.linspace(0, last, starts).astype(int)] if last >= 0 else []
    if not jobs:
        raise ValueError(f"no {split} episode is long enough for {horizon} rollout steps of k={predictor.k}")
    runs = [rollout_episode(predictor, cache, ep, s, horizon, sampler, seed=s)
            for ep, s in tqdm(jobs, desc="rollouts", disable=not progress, leave=False)]
    model = np.mean([r.psnr for r in runs], axis=0)[1:]
    hold = np.mean([r.hold_psnr for r in runs], axis=0)[1:]
    return {"rollouts": len(runs), "horizon": horizon, "psnr": model.tolist(), "hold_psnr": hold.tolist(),
            "beats_hold_every_step": bool(np.all(model > hold))}


def save_animation(frames: np.ndarray, path: str | Path, fps: float = 4.0, scale: int = 2) -> Path:
    """Write (N, H, W, C) uint8 frames as a GIF or MP4 (by the suffix), atomically."""
    import imageio.v3 as iio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"unsupported animation format {suffix!r}: use .gif or .mp4")
    frames = np.repeat(np.repeat(frames, scale, axis=1), scale, axis=2) if scale > 1 else frames
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    if suffix == ".mp4":  # H.264 wants even sizes
        frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]
    with atomic_path(path) as tmp:
        if suffix == ".gif":
            iio.imwrite(tmp, frames, extension=".gif", duration=1000 / fps, loop=0)
        else:
            iio.imwrite(tmp, frames, extension=".mp4", fps=fps, codec="libx264", macro_block_size=1)
    return path
