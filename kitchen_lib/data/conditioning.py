"""What a world model sees besides the current frame: the recent past, the actions, the robot.

One frame does not say how fast the arm moves or what it is told to do next, so a frame-only
model has to guess among several futures. The dataset stores what settles that:

    context_frames N   the frames at t-k, t-2k, ..., t-Nk (k steps apart, like the prediction, so a
                       rollout can feed its own predictions back as context), stacked before the
                       current frame on the channel axis, oldest first. A context never reaches
                       before its episode's start: there it repeats frame 0.
    actions            the k actions a_t .. a_{t+k-1} that lead from frame t to frame t+k
                       (k x 9 numbers), normalised by the network with the training split's statistics.
    proprio            the robot's 9 joint positions at t (observation[0:9]).
    context_noise      std of the Gaussian noise added to the context frames in training (as in
                       GameNGen), so a rollout, whose context is the model's own output, stays in
                       the distribution the model was trained on.

The pairs cache keeps each frame's action and joint state in `actions.npy` and `proprio.npy`
(float32, one row per frame; the last frame of an episode has no action and gets zeros).
Caches built before these files existed get them on first use, read from the episodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from kitchen_lib.base.images import to_tensor
from kitchen_lib.base.paths import atomic_path
from kitchen_lib.data.datasets import iter_episodes
from kitchen_lib.data.pairs import PairsCache, spread

ACTION_DIM = 9  # 7 arm joint velocities, 2 fingers, in [-1, 1]
PROPRIO_DIM = 9  # 7 arm joint positions, 2 fingers


@dataclass(frozen=True)
class ConditioningConfig:
    """What the model is given besides the current frame (all off: the frame-only model)."""

    context_frames: int = 0  # frames before the current one (k steps apart), stacked on the channel axis
    actions: bool = False  # the k actions from t to t+k-1, through scale-and-shift of every res block
    proprio: bool = False  # the robot's joint positions at t, likewise
    context_noise: float = 0.0  # std of noise on the context frames during training (in [-1, 1] units)

    def validate(self) -> None:
        if self.context_frames < 0:
            raise ValueError(f"--context_frames must be 0 or more (got {self.context_frames})")
        if self.context_noise < 0:
            raise ValueError(f"--context_noise must be 0 or more (got {self.context_noise})")

    def vector_dim(self, k: int) -> int:
        """Length of the conditioning vector: k actions and/or the joint state."""
        return (k * ACTION_DIM if self.actions else 0) + (PROPRIO_DIM if self.proprio else 0)


def frame_vectors(cache: PairsCache) -> tuple[np.ndarray, np.ndarray]:
    """(F, 9) action and (F, 9) joint-state rows, one per cached frame; made once per cache."""
    paths = cache.path / "actions.npy", cache.path / "proprio.npy"
    if not all(p.is_file() for p in paths):
        actions = np.zeros((len(cache.frames), ACTION_DIM), np.float32)
        proprio = np.zeros((len(cache.frames), PROPRIO_DIM), np.float32)
        first = {e["index"]: (e["first_frame"], e["num_frames"]) for e in cache.meta["episodes"]}
        for ep in iter_episodes(cache.meta["config"]["dataset"], sorted(first)):
            f0, n = first[ep.index]
            actions[f0 : f0 + len(ep.actions)] = ep.actions[: n - 1]
            proprio[f0 : f0 + n] = ep.observations[:n, :PROPRIO_DIM]
        for path, rows in zip(paths, (actions, proprio), strict=True):
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.save(f, rows, allow_pickle=False)
    out = tuple(np.load(p, allow_pickle=False) for p in paths)
    if any(a.shape[0] != len(cache.frames) for a in out):
        raise ValueError(f"{cache.path}: actions.npy/proprio.npy do not match frames.npy; delete them to rebuild them")
    return out


def context_rows(frame: np.ndarray, first_frame: np.ndarray, n: int, k: int) -> np.ndarray:
    """(B,) current-frame rows -> (B, n) rows of the frames n*k, ..., 2k, k steps before each
    (oldest first), clamped to the episode's first frame."""
    offsets = -k * np.arange(n, 0, -1)
    return np.maximum(frame[:, None] + offsets[None], first_frame[:, None])


class ConditionedPairs(Dataset):
    """Pairs of a split with what `cfg` asks for, as dicts of tensors:

    {"current": (C, H, W), "future": (C, H, W)[, "context": (N*C, H, W)][, "vector": (D,)]}
    Frames are in [-1, 1]; the vector is raw (the network normalises it)."""

    def __init__(self, cache: PairsCache, split: str, cfg: ConditioningConfig = ConditioningConfig()) -> None:
        self.cache, self.cfg, self.k = cache, cfg, cache.meta["config"]["k"]
        self.rows = cache.frame_indices(split)  # (N, 2) current, future frame rows
        first = {e["index"]: e["first_frame"] for e in cache.meta["episodes"]}
        self.first = np.array([first[int(e)] for e in cache.pairs(split)[:, 0]], dtype=np.int64)
        self.actions, self.proprio = frame_vectors(cache) if cfg.actions or cfg.proprio else (None, None)

    def __len__(self) -> int:
        return len(self.rows)

    def vectors(self, idx: np.ndarray) -> np.ndarray:
        """(B, D) raw conditioning vectors of pairs idx."""
        cur = self.rows[idx, 0]
        parts = []
        if self.cfg.actions:
            parts.append(self.actions[cur[:, None] + np.arange(self.k)[None]].reshape(len(idx), -1))
        if self.cfg.proprio:
            parts.append(self.proprio[cur])
        return np.concatenate(parts, axis=1) if parts else np.zeros((len(idx), 0), np.float32)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        cur, fut = self.rows[i]
        item = {"current": to_tensor(self.cache.frames[cur]), "future": to_tensor(self.cache.frames[fut])}
        if self.cfg.context_frames:
            rows = context_rows(np.array([cur]), self.first[i : i + 1], self.cfg.context_frames, self.k)[0]
            item["context"] = to_tensor(self.cache.frames[rows]).flatten(0, 1)  # (N, C, H, W) -> (N*C, H, W)
        if self.cfg.actions or self.cfg.proprio:
            item["vector"] = torch.from_numpy(self.vectors(np.array([i]))[0].astype(np.float32))
        return item

    def vector_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std (floored) of the conditioning vectors over this split."""
        v = self.vectors(np.arange(len(self)))
        return v.mean(0).astype(np.float32), np.maximum(v.std(0), 1e-3).astype(np.float32)


def pair_inputs(cache: PairsCache, split: str, cfg: ConditioningConfig = ConditioningConfig(),
                max_pairs: int | None = None) -> dict[str, np.ndarray]:
    """Everything a model needs for the pairs of a split ('all': every split), evenly thinned to
    max_pairs, as arrays: "rows" (N, 2) (episode, step), "current" and "future" uint8 (N, H, W, C),
    "context" uint8 (N, n, H, W, C) and "vector" float32 (N, D) when `cfg` asks for them."""
    splits = ("train", "val", "test") if split == "all" else (split,)
    sets = [ConditionedPairs(cache, s, cfg) for s in splits]
    rows = np.concatenate([cache.pairs(s) for s in splits])
    pick = spread(np.arange(len(rows)), max_pairs, f"the {split} split")
    frame_rows = np.concatenate([d.rows for d in sets])[pick]
    out = {"rows": rows[pick], "current": np.asarray(cache.frames[frame_rows[:, 0]]),
           "future": np.asarray(cache.frames[frame_rows[:, 1]])}
    if cfg.context_frames:
        first = np.concatenate([d.first for d in sets])[pick]
        ctx = context_rows(frame_rows[:, 0], first, cfg.context_frames, cache.meta["config"]["k"])
        out["context"] = np.asarray(cache.frames[ctx.ravel()]).reshape(*ctx.shape, *cache.frames.shape[1:])
    if cfg.actions or cfg.proprio:
        out["vector"] = np.concatenate([d.vectors(np.arange(len(d))) for d in sets])[pick].astype(np.float32)
    return out


def shuffled_actions(vector: np.ndarray, cfg: ConditioningConfig, k: int, seed: int = 0) -> np.ndarray:
    """The same vectors with each pair's actions replaced by another pair's (a fixed-seed
    permutation with no pair kept), the joint state left alone: does the model use the actions?"""
    if not cfg.actions or len(vector) < 2:
        raise ValueError("shuffling actions needs an action-conditioned model and at least 2 pairs")
    order = np.random.default_rng(seed).permutation(len(vector))
    perm = np.empty_like(order)
    perm[order] = np.roll(order, -1)  # one cycle through a random order: nobody keeps their own
    out = vector.copy()
    n = k * ACTION_DIM
    out[:, :n] = vector[perm, :n]
    return out


def episode_vectors(cache: PairsCache, episode: int) -> tuple[np.ndarray, np.ndarray]:
    """One episode's (T, 9) actions and (T+1, 9) joint states, as the pairs cache keeps them."""
    actions, proprio = frame_vectors(cache)
    e = next((e for e in cache.meta["episodes"] if e["index"] == episode), None)
    if e is None:
        raise ValueError(f"episode {episode} is not in this cache (episodes {[e['index'] for e in cache.meta['episodes']]})")
    rows = slice(e["first_frame"], e["first_frame"] + e["num_frames"])
    return actions[rows][:-1], proprio[rows]


def step_inputs(cache: PairsCache, episode: int, step: int, cfg: ConditioningConfig,
                actions_of: int | None = None) -> dict[str, np.ndarray]:
    """What a model needs to predict from env step `step` of an episode (uint8 frames, raw
    vector); `actions_of` takes the actions from another episode, same steps."""
    frames, k = cache.episode_frames(episode), cache.meta["config"]["k"]
    if not 0 <= step < len(frames) - k:
        raise ValueError(f"step {step} has no frame k={k} steps ahead in episode {episode} (steps 0..{len(frames) - 1 - k})")
    out = {"current": np.asarray(frames[step]), "future": np.asarray(frames[step + k])}
    if cfg.context_frames:
        rows = context_rows(np.array([step]), np.array([0]), cfg.context_frames, k)[0]
        out["context"] = np.asarray(frames[rows])
    if cfg.actions or cfg.proprio:
        actions, proprio = episode_vectors(cache, episode)
        if actions_of is not None:
            actions = episode_vectors(cache, actions_of)[0]
            if len(actions) < step + k:
                raise ValueError(f"episode {actions_of} has no actions for steps {step}..{step + k - 1}")
        parts = ([actions[step : step + k].reshape(-1)] if cfg.actions else []) + ([proprio[step]] if cfg.proprio else [])
        out["vector"] = np.concatenate(parts).astype(np.float32)
    return out
