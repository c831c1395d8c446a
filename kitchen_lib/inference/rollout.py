"""Autoregressive rollouts: feed each prediction back as the next current frame.

One rollout step jumps k env steps, so step i predicts frame start + i*k and is compared with
the true frame there. Errors compound: a rollout shows how long the model's kitchen stays
believable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kitchen_lib.base.errors import UserError
from kitchen_lib.base.images import difference_image
from kitchen_lib.base.paths import atomic_path
from kitchen_lib.data.cache import PairsCache
from kitchen_lib.data.examples import Episode, gather
from kitchen_lib.inference.metrics import capped_psnr
from kitchen_lib.inference.predictor import Predictor
from kitchen_lib.model.samplers import SamplerConfig


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


def rollout(predictor: Predictor, episode: Episode, start: int, horizon: int, sampler: SamplerConfig | None = None,
            seed: int = 0) -> Rollout:
    """Predict `horizon` jumps of k env steps from episode.frames[start], feeding predictions back.

    `sampler` defaults to the one the model's run chose. Each step's example is gathered as in
    training (kitchen_lib.data.examples.gather) from a copy of the episode whose frames after
    `start` are the rollout's own predictions: a world model's context is the true frames up to
    `start`, then its own past, and it is driven by the episode's actions (`episode.with_actions`:
    another episode's, "what if the robot had done that instead")."""
    k, frames = predictor.k, episode.frames
    limit = max_horizon(len(frames), start, k)
    if not 0 <= start < len(frames):
        raise UserError(f"start {start} is outside the episode (frames 0..{len(frames) - 1})")
    if horizon < 1 or horizon > limit:
        raise UserError(f"horizon {horizon} does not fit: from step {start}, this {len(frames) - 1}-step episode "
                         f"has room for 1..{limit} rollout steps of k={k}")
    if predictor.conditioning.actions and episode.actions is not None and len(episode.actions) < start + k * horizon:
        raise UserError(f"{len(episode.actions)} actions do not cover {horizon} rollout steps of k={k} from step {start}")
    dream = episode.dreaming()
    for i in range(horizon):
        t = start + i * k  # env step of the current frame: the truth at i = 0, then a prediction
        example = gather(dream, np.array([[0, t]]), predictor.conditioning, target=False)
        dream.frames[t + k] = predictor.predict(example, sampler, seed=seed + i)[0]
    idx = start + k * np.arange(horizon + 1)
    truth, pred = np.asarray(frames[idx]), dream.frames[idx]
    scores = np.array([capped_psnr(t, p) for t, p in zip(truth, pred, strict=True)])
    hold = np.array([capped_psnr(t, truth[0]) for t in truth])
    return Rollout(pred, truth, idx, scores, hold)


def rollout_episode(predictor: Predictor, cache: PairsCache, episode: int, start: int, horizon: int,
                    sampler: SamplerConfig | None = None, seed: int = 0, actions_of: int | None = None) -> Rollout:
    """`rollout` on an episode of a pairs cache, with its recorded actions and joint states
    (`actions_of`: another episode's actions, same env steps)."""
    source = cache.episode(episode)
    if actions_of is not None:
        if not predictor.conditioning.actions:
            raise UserError("actions_of needs an action-conditioned model (e.g. --preset cpu-world)")
        source = source.with_actions(cache.episode(actions_of).actions)
    return rollout(predictor, source, start, horizon, sampler, seed)


def rollout_starts(cache: PairsCache, episodes: list[int], horizon: int, starts: int) -> list[tuple[int, int]]:
    """(episode, start step): `starts` evenly spread starts in each of `episodes` long enough for
    `horizon` jumps of the cache's k."""
    jobs = []
    for ep in episodes:
        last = len(cache.episode_frames(ep)) - 1 - horizon * cache.k
        jobs += [(int(ep), int(s)) for s in np.linspace(0, last, starts).astype(int)] if last >= 0 else []
    return jobs


def mean_rollouts(predictor: Predictor, cache: PairsCache, split: str | Sequence[str] = "test", starts: int = 8,
                  horizon: int = 10, sampler: SamplerConfig | None = None, progress: bool = True,
                  dataset: str | None = None) -> dict:
    """Rollouts on recorded actions from `starts` evenly spread starts in every episode of a split
    (or several; of one of the cache's joined datasets if `dataset` names one), beside holding the
    start frame still. Lists of `horizon` numbers, step 1 first: "psnr" and "hold_psnr" (means per
    step); "worst_margin" (of the means), "falls_to_hold_at" (the first step whose mean is not
    above hold's, None for never), "share_beating_hold" (single rollouts above hold at every
    step), "beats_hold_every_step", "rollouts", "horizon" and "starts" (the (episode, step) pairs)."""
    from tqdm.auto import tqdm

    splits = [split] if isinstance(split, str) else list(split)
    episodes = [ep for sp in splits for ep in cache.meta["splits"][sp]]
    if dataset is not None:
        mine = set(cache.episodes_of(dataset))  # raises, naming the cache's datasets, for another id
        episodes = [ep for ep in episodes if ep in mine]
    jobs = rollout_starts(cache, episodes, horizon, starts)
    if not jobs:
        raise UserError(f"no {'/'.join(splits)} episode{' of ' + dataset if dataset else ''} is long enough for "
                        f"{horizon} rollout steps of k={cache.k}")
    runs = [rollout_episode(predictor, cache, ep, s, horizon, sampler, seed=s)
            for ep, s in tqdm(jobs, desc="rollouts", disable=not progress, leave=False)]
    model = np.array([r.psnr[1:] for r in runs])  # (rollouts, horizon)
    hold = np.array([r.hold_psnr[1:] for r in runs])
    mean, mean_hold = model.mean(0), hold.mean(0)
    below = np.flatnonzero(mean <= mean_hold)
    return {"rollouts": len(runs), "horizon": horizon, "psnr": mean.tolist(), "hold_psnr": mean_hold.tolist(),
            "beats_hold_every_step": not len(below), "worst_margin": float((mean - mean_hold).min()),
            "falls_to_hold_at": int(below[0]) + 1 if len(below) else None,
            "share_beating_hold": float(np.mean(np.all(model > hold, axis=1))), "starts": [list(j) for j in jobs]}


def save_animation(frames: np.ndarray, path: str | Path, fps: float = 4.0, scale: int = 2) -> Path:
    """Write (N, H, W, C) uint8 frames as a GIF or MP4 (by the suffix), atomically."""
    import imageio.v3 as iio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise UserError(f"unsupported animation format {suffix!r}: use .gif or .mp4")
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
